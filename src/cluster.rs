//! The cluster manager behind small traits, so that the workflows never name a backend: find
//! a host by its instance, hand out a registration, take one named step of a take-out; and
//! the agent the manager runs on this host. Rancher 1.x implements [`Cluster`]
//! (`rancher::manager`), the Docker client implements [`LocalAgent`]. No I/O here.

use std::fmt;
use std::future::Future;
use std::time::SystemTime;

use secrecy::SecretString;
use tokio::time::Instant;

/// The state a backend reports for a host it no longer knows.
pub const GONE: &str = "gone";

/// A host as the workflows see it, whatever the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterHost {
    pub id: String,
    /// The backend's own word for its state (`active`, `reconnecting`, `inactive`, ...).
    pub state: String,
    /// Active and its agent connected.
    pub active: bool,
    pub hostname: Option<String>,
}

/// How the cluster sees the agent of a host: the reaper's evidence that a host is dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentContact {
    /// Connected (or the backend says nothing against it).
    Connected,
    /// Missed pings: the agent may be back any moment (a restart, a short partition).
    Reconnecting,
    /// Gone for good as far as the backend can tell; it stays so until someone acts.
    Disconnected,
}

impl AgentContact {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentContact::Connected => "connected",
            AgentContact::Reconnecting => "reconnecting",
            AgentContact::Disconnected => "disconnected",
        }
    }
}

impl fmt::Display for AgentContact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host of the environment as one listing shows it, with what drover's labels say of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvHost {
    pub id: String,
    /// The backend's own word for its state.
    pub state: String,
    /// The `aws.instance_id` label; `None` on a host drover did not register.
    pub instance_id: Option<String>,
    /// The `aws.autoscaling_group` label.
    pub group: Option<String>,
    /// The `aws.region` label.
    pub region: Option<String>,
    pub agent: AgentContact,
    pub hostname: Option<String>,
}

impl EnvHost {
    /// Labelled with an instance and its agent connected: a host that runs a drover, as far
    /// as the backend can tell (a dead host's agent is disconnected). The reaper spreads its
    /// waits over how many a listing holds.
    pub fn runs_a_drover(&self) -> bool {
        runs_a_drover(self.instance_id.as_deref(), self.agent)
    }
}

/// [`EnvHost::runs_a_drover`] for a backend counting its own hosts as it lists them.
pub fn runs_a_drover(instance_id: Option<&str>, agent: AgentContact) -> bool {
    instance_id.is_some() && agent == AgentContact::Connected
}

/// What the agent needs to join. The URL lets anyone add hosts: a secret.
#[derive(Debug, Clone)]
pub struct AgentRegistration {
    pub url: SecretString,
    /// The agent image the server asks for, when it says.
    pub image: Option<String>,
    /// For logs: which token (by id) is used.
    pub token_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The backend answered in a way retrying does not fix.
    #[error(transparent)]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// The deadline passed while still trying.
    #[error("{0}")]
    OutOfTime(String),
}

/// One step of taking a host out, in the order they are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// Move the host's containers elsewhere first (where the backend can), and wait until
    /// they are gone from it.
    Evacuate,
    /// Stop scheduling onto the host.
    Deactivate,
    /// Remove the host from the environment: from here on it is out.
    Remove,
    /// Forget it for good.
    Purge,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Evacuate => "evacuate",
            Step::Deactivate => "deactivate",
            Step::Remove => "remove",
            Step::Purge => "purge",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Something that happened during a step, when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepEvent {
    pub at: SystemTime,
    pub what: Happened,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happened {
    /// An action was sent to the host, which was in `from`.
    Sent { action: String, from: String },
    /// The host was seen in a new state.
    Became(String),
    /// The backend no longer knows the host.
    Gone,
    /// What the backend saw or decided on the way that is none of the above, in its own
    /// words: an evacuation's event and the containers still on the host, or why a host is
    /// not evacuated.
    Noted(String),
}

impl fmt::Display for Happened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Happened::Sent { action, from } => write!(f, "{action} (host {from})"),
            Happened::Became(state) => write!(f, "host {state}"),
            Happened::Gone => f.write_str("host no longer known to Rancher"),
            Happened::Noted(text) => f.write_str(text),
        }
    }
}

/// A step that ended: the host's state after it ([`GONE`] when the backend no longer knows
/// it), and what happened on the way. No events: the step was done already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepDone {
    pub state: String,
    pub events: Vec<StepEvent>,
}

/// A step that failed: the host's last known state, why, and what happened before.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct StepFailed {
    pub state: String,
    pub error: String,
    pub events: Vec<StepEvent>,
}

/// What every cluster manager backend offers the workflows.
pub trait Cluster: Send + Sync + 'static {
    /// A short name for logs and pages (`rancher v2-beta project 1a5 at https://...`).
    fn describe(&self) -> String;

    /// Every host registered for `instance_id` that is still in the environment, found by
    /// the label drover set, never by name; active ones first. More than one: an earlier
    /// boot's host never taken out, or a registration that ran twice. All are the instance's.
    fn find_hosts(
        &self,
        instance_id: &str,
        deadline: Instant,
    ) -> impl Future<Output = Result<Vec<ClusterHost>, ClusterError>> + Send;

    /// Every host still in the environment, in one listing: what a reaper sweep reads.
    fn hosts(
        &self,
        deadline: Instant,
    ) -> impl Future<Output = Result<Vec<EnvHost>, ClusterError>> + Send;

    /// How many hosts of the last listing of the whole environment carry an instance id and
    /// have their agent connected (the hosts that run a drover, as far as the backend can
    /// tell), whichever call made it: a registration lists every host to find its own.
    /// `None` before any. A fresh reaper's first wait is drawn from it.
    fn connected_labelled_last_listed(&self) -> Option<usize> {
        None
    }

    /// One host by id; `None` when the backend no longer knows it. Cheaper than a listing:
    /// what a registration polls once it knows its host.
    fn host(
        &self,
        host_id: &str,
        deadline: Instant,
    ) -> impl Future<Output = Result<Option<ClusterHost>, ClusterError>> + Send;

    /// The host registered for `instance_id`: an active one before any other.
    fn find_host(
        &self,
        instance_id: &str,
        deadline: Instant,
    ) -> impl Future<Output = Result<Option<ClusterHost>, ClusterError>> + Send {
        async move {
            Ok(self
                .find_hosts(instance_id, deadline)
                .await?
                .into_iter()
                .next())
        }
    }

    /// A registration for the agent, creating one if the environment has none yet.
    fn registration(
        &self,
        deadline: Instant,
    ) -> impl Future<Output = Result<AgentRegistration, ClusterError>> + Send;

    /// Brings the host through `step` (and whatever the step needs first), skipping what is
    /// done already, so that running it again, or after a crash, picks up where it stopped.
    fn take_step(
        &self,
        host_id: &str,
        step: Step,
        deadline: Instant,
    ) -> impl Future<Output = Result<StepDone, StepFailed>> + Send;
}

/// The cluster manager's agent on this host, which keeps reconnecting a removed host.
pub trait LocalAgent: Send + Sync + 'static {
    /// Stops the agent; `false` when none was running.
    fn stop(&self) -> impl Future<Output = Result<bool, String>> + Send;
}
