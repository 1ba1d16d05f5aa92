//! The subcommands: each builds the clients it needs from the config and runs one workflow.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use tokio::time::Instant;
use tracing::Instrument;

use crate::autoscaling::{AutoScaling, TERMINATING_TRANSITION};
use crate::cluster::{ClusterError, Rancher1};
use crate::config::{Config, OnSigterm};
use crate::docker::AgentDocker;
use crate::imds::{is_warm_pool_state, Imds, ImdsError, InstanceIdentity};
use crate::pager::Pager;
use crate::rancher::{RancherClient, RancherError};
use crate::register::{register, RegisterError, RegisterOutcome};
use crate::retry;
use crate::sources::signal::{machine_going_away, StopSignals};
use crate::sources::{imds_poll, queue};
use crate::sqs::Sqs;
use crate::state::StateDir;
use crate::termination::{Outcome, Source, Termination};
use crate::workflow::{record_file, TakeOutRecord, Workflow};

/// A failure of a subcommand, shown to the operator as one readable chain.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("reading instance metadata: {0}")]
    Imds(#[from] ImdsError),
    #[error("registering: {0}")]
    Register(#[from] RegisterError),
    #[error("connecting to Rancher: {0}")]
    Cluster(#[from] ClusterError),
    #[error("registering: gave up after agent.register_timeout ({0:?})")]
    RegisterTimeout(Duration),
    #[error("{0} check(s) failed")]
    ChecksFailed(usize),
    #[error("deregistering: {0}")]
    Deregister(String),
    #[error("{0}")]
    Setup(String),
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// The group: from the instance tags when metadata tags are on, else from Auto Scaling.
/// Not knowing it only costs a label, so a failure here is a warning.
async fn resolve_group(identity: &InstanceIdentity) -> Option<String> {
    if let Some(g) = &identity.autoscaling_group {
        return Some(g.clone());
    }
    let sdk = crate::aws::sdk_config(&identity.region).await;
    let asg = AutoScaling::new(&sdk);
    match tokio::time::timeout(
        Duration::from_secs(20),
        asg.membership(&identity.instance_id),
    )
    .await
    {
        Ok(Ok(Some(m))) => Some(m.group),
        Ok(Ok(None)) => None,
        Ok(Err(e)) => {
            tracing::warn!("cannot tell this instance's Auto Scaling group ({e}); the host gets no aws.autoscaling_group label");
            None
        }
        Err(_) => {
            tracing::warn!("DescribeAutoScalingInstances did not answer within 20s; the host gets no aws.autoscaling_group label");
            None
        }
    }
}

async fn connect_rancher(
    config: &Config,
    deadline: Instant,
) -> Result<RancherClient, ClusterError> {
    Ok(retry::until(
        "connecting to Rancher",
        deadline,
        Duration::from_secs(5),
        RancherError::is_transient,
        || RancherClient::connect(&config.rancher),
    )
    .await?)
}

/// `drover register`: the whole boot step within `agent.register_timeout`.
pub async fn register_command(config: &Config) -> Result<(), AppError> {
    let deadline = Instant::now() + config.agent.register_timeout;
    let identity = Imds::new().identity(left(deadline)).await?;
    register_identity(config, &identity, None, deadline).await
}

/// Registers the instance `identity` describes, reusing a Rancher client when the caller
/// has one; gives up at `deadline`.
async fn register_identity(
    config: &Config,
    identity: &InstanceIdentity,
    client: Option<RancherClient>,
    deadline: Instant,
) -> Result<(), AppError> {
    let span = tracing::info_span!(
        "host",
        instance_id = %identity.instance_id,
        host_id = tracing::field::Empty
    );
    let work = async {
        tracing::info!(
            instance_type = %identity.instance_type,
            zone = %identity.availability_zone,
            "read instance identity from IMDS"
        );
        if let Some(state) = identity
            .target_lifecycle_state
            .as_deref()
            .filter(|s| is_warm_pool_state(s))
        {
            tracing::info!(
                "target lifecycle state is {state}: the instance is in a warm pool; not registering"
            );
            return Ok(());
        }
        let group = resolve_group(identity).await;
        if let Some(g) = &group {
            tracing::info!(group = %g, "instance is in an Auto Scaling group");
        }
        let client = match client {
            Some(c) => c,
            None => connect_rancher(config, deadline).await?,
        };
        let cluster = Rancher1::new(client);
        let outcome = register(config, identity, group.as_deref(), &cluster, deadline).await?;
        match outcome {
            RegisterOutcome::AlreadyActive { .. } => {
                tracing::info!("already registered; nothing changed")
            }
            RegisterOutcome::Registered { .. } => tracing::info!("registered"),
        }
        Ok(())
    }
    .instrument(span);
    // Every step already watches the deadline; this is the hard stop should one not.
    match tokio::time::timeout_at(deadline + Duration::from_secs(5), work).await {
        Ok(result) => result,
        Err(_) => Err(AppError::RegisterTimeout(config.agent.register_timeout)),
    }
}

/// One line of `drover check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mark {
    Ok,
    Fail,
    Skip,
    Warn,
}

impl Mark {
    fn label(&self) -> &'static str {
        match self {
            Mark::Ok => "ok",
            Mark::Fail => "FAIL",
            Mark::Skip => "skip",
            Mark::Warn => "warn",
        }
    }
}

fn line(mark: Mark, name: &str, detail: impl std::fmt::Display) -> Mark {
    println!("{:<5} {:<12} {}", mark.label(), name, detail);
    mark
}

const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

async fn bounded<T>(fut: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(CHECK_TIMEOUT, fut).await.ok()
}

/// `drover check`: one line per dependency; fails when any check fails.
pub async fn check_command(config: &Config) -> Result<(), AppError> {
    let mut marks = vec![line(
        Mark::Ok,
        "config",
        format!("{} is valid", config.path.display()),
    )];

    let imds = Imds::new();
    let identity = match bounded(imds.identity(Duration::from_secs(10))).await {
        Some(Ok(id)) => {
            marks.push(line(
                Mark::Ok,
                "imds",
                format!(
                    "{} ({}, {}), target lifecycle state {}",
                    id.instance_id,
                    id.instance_type,
                    id.availability_zone,
                    id.target_lifecycle_state
                        .as_deref()
                        .unwrap_or("not set yet")
                ),
            ));
            Some(id)
        }
        Some(Err(e)) => {
            marks.push(line(Mark::Fail, "imds", e));
            None
        }
        None => {
            marks.push(line(Mark::Fail, "imds", "no answer within 15s"));
            None
        }
    };

    marks.push(match bounded(AgentDocker::probe()).await {
        Some(Ok((d, version))) => line(Mark::Ok, "docker", format!("{} at {}", version, d.host())),
        Some(Err(e)) => line(Mark::Fail, "docker", e),
        None => line(Mark::Fail, "docker", "no answer within 15s"),
    });

    let rancher = async {
        let client = RancherClient::connect(&config.rancher).await?;
        let project = client.project().await?;
        Ok::<_, RancherError>((client.api(), project))
    };
    marks.push(match bounded(rancher).await {
        Some(Ok((api, project))) => line(
            Mark::Ok,
            "rancher",
            format!(
                "{} API {}, key works in project {} ({})",
                config.rancher.url,
                api.path(),
                project.id,
                project.name.as_deref().unwrap_or("unnamed")
            ),
        ),
        Some(Err(e)) => line(Mark::Fail, "rancher", e),
        None => line(Mark::Fail, "rancher", "no answer within 15s"),
    });

    let region = identity
        .as_ref()
        .map(|i| i.region.clone())
        .unwrap_or_default();
    let sdk = crate::aws::sdk_config(&region).await;

    marks.push(match &config.lifecycle.queue_url {
        None => line(Mark::Skip, "sqs", "lifecycle.queue_url not set"),
        Some(url) => match bounded(Sqs::new(&sdk).queue_depth(url)).await {
            Some(Ok(depth)) => line(
                Mark::Ok,
                "sqs",
                format!("{url} readable, about {depth} message(s) waiting"),
            ),
            Some(Err(e)) => line(Mark::Fail, "sqs", e),
            None => line(Mark::Fail, "sqs", "no answer within 15s"),
        },
    });

    marks.push(match &identity {
        None => line(Mark::Fail, "autoscaling", "needs the instance id from IMDS"),
        Some(id) => check_autoscaling(config, &sdk, id).await,
    });

    let pager = &config.pager;
    marks.push(match (&pager.pagerduty_routing_key, &pager.webhook_url) {
        (None, None) => line(
            Mark::Warn,
            "pager",
            "no pager configured: failures will only be logged",
        ),
        (key, hook) => line(
            Mark::Ok,
            "pager",
            format!(
                "PagerDuty {}; webhook {}",
                if key.is_some() {
                    format!("routing key set, events to {}", pager.pagerduty_url)
                } else {
                    "not set".into()
                },
                hook.as_ref()
                    .map(|u| format!("to {}", u.host_str().unwrap_or("?")))
                    .unwrap_or_else(|| "not set".into())
            ),
        ),
    });

    let failed = marks.iter().filter(|m| **m == Mark::Fail).count();
    if failed > 0 {
        Err(AppError::ChecksFailed(failed))
    } else {
        Ok(())
    }
}

async fn check_autoscaling(
    config: &Config,
    sdk: &aws_config::SdkConfig,
    identity: &InstanceIdentity,
) -> Mark {
    let asg = AutoScaling::new(sdk);
    let membership = match bounded(asg.membership(&identity.instance_id)).await {
        Some(Ok(m)) => m,
        Some(Err(e)) => return line(Mark::Fail, "autoscaling", e),
        None => return line(Mark::Fail, "autoscaling", "no answer within 15s"),
    };
    let Some(m) = membership else {
        return line(
            Mark::Ok,
            "autoscaling",
            format!(
                "DescribeAutoScalingInstances allowed; {} is in no group",
                identity.instance_id
            ),
        );
    };
    let hooks = match bounded(asg.hooks(&m.group)).await {
        Some(Ok(h)) => h,
        Some(Err(e)) => return line(Mark::Fail, "autoscaling", e),
        None => return line(Mark::Fail, "autoscaling", "no answer within 15s"),
    };
    let terminating: Vec<_> = hooks
        .iter()
        .filter(|h| h.transition == TERMINATING_TRANSITION)
        .collect();
    let wanted = config.lifecycle.hook_name.as_deref();
    let chosen = match wanted {
        Some(name) => terminating.iter().find(|h| h.name == name),
        None => terminating.first(),
    };
    match (chosen, wanted) {
        (Some(h), _) => line(
            Mark::Ok,
            "autoscaling",
            format!(
                "group {} ({}), termination hook {:?} with heartbeat timeout {}s",
                m.group,
                m.lifecycle_state.as_deref().unwrap_or("?"),
                h.name,
                h.heartbeat_timeout_secs.unwrap_or(3600)
            ),
        ),
        (None, Some(name)) => line(
            Mark::Fail,
            "autoscaling",
            format!(
                "group {} has no termination hook named {name:?} (lifecycle.hook_name)",
                m.group
            ),
        ),
        (None, None) => line(
            Mark::Warn,
            "autoscaling",
            format!(
                "group {} has no EC2_INSTANCE_TERMINATING hook: Auto Scaling will not wait for drover",
                m.group
            ),
        ),
    }
}

/// Builds the workflow shared by `run` and `deregister`.
async fn workflow(
    config: &Arc<Config>,
    identity: &InstanceIdentity,
    client: RancherClient,
) -> Result<Workflow<Rancher1>, AppError> {
    let sdk = crate::aws::sdk_config(&identity.region).await;
    let pager = Pager::new(&config.pager).map_err(|e| AppError::Setup(e.to_string()))?;
    Ok(Workflow::new(
        Arc::clone(config),
        identity.instance_id.clone(),
        identity.autoscaling_group.clone(),
        Rancher1::new(client),
        Some(AutoScaling::new(&sdk)),
        pager,
    ))
}

/// `drover deregister`: take this host out now and complete its lifecycle action.
pub async fn deregister_command(config: Arc<Config>, if_going_away: bool) -> Result<(), AppError> {
    let imds = Imds::new();
    if if_going_away {
        match machine_going_away(&imds).await {
            Some(why) => tracing::info!("taking the host out: {why}"),
            None => {
                tracing::info!(
                    "the machine is not going away (no termination, no Spot notice, no power-off): the host stays registered"
                );
                return Ok(());
            }
        }
    }
    let identity = imds.identity(Duration::from_secs(60)).await?;
    let client = connect_rancher(&config, Instant::now() + Duration::from_secs(120)).await?;
    let wf = workflow(&config, &identity, client).await?;
    match wf.handle(Termination::new(&identity.instance_id, Source::Command)).await {
        Outcome::Done => Ok(()),
        other => Err(AppError::Deregister(match other {
            Outcome::FailedButCompleted => {
                "taking the host out failed (paged; lifecycle action answered with lifecycle.on_failure)".into()
            }
            Outcome::NotCompleted => "the lifecycle action could not be completed (paged)".into(),
            _ => format!("{other:?}"),
        })),
    }
}

fn notify_systemd(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::warn!("cannot notify systemd: {e}");
    }
}

/// Asks systemd for `budget` more time in the current phase (start or stop), so that a
/// config with longer timeouts than the unit's defaults is not killed half-way. systemd only
/// ever extends, never shortens, the unit's own timeout.
fn extend_systemd_timeout(budget: Duration) {
    let usec = u32::try_from(budget.as_micros()).unwrap_or(u32::MAX);
    notify_systemd(sd_notify::NotifyState::ExtendTimeoutUsec(usec));
}

/// `drover run`: register, tell systemd, watch every termination source, take the host out
/// on the first one, and stay up until SIGTERM.
pub async fn run_command(config: Arc<Config>) -> Result<(), AppError> {
    // Signals first: a SIGTERM during registration must not kill drover mid-step.
    let mut signals = StopSignals::install()
        .map_err(|e| AppError::Setup(format!("cannot install signal handlers: {e}")))?;
    let imds = Imds::new();
    let identity = imds.identity(config.agent.register_timeout).await?;
    let own = identity.instance_id.clone();

    // Start-up may take register_timeout plus an image pull; more than the unit's
    // TimeoutStartSec when an operator raised register_timeout.
    extend_systemd_timeout(config.agent.register_timeout + Duration::from_secs(300));
    let (tx, rx) = mpsc::channel::<Termination>(64);
    let stop = CancellationToken::new();
    // One client serves registration and the workflow.
    let client = connect_rancher(&config, Instant::now() + config.agent.register_timeout).await?;
    let wf = Arc::new(workflow(&config, &identity, client.clone()).await?);

    // A take-out an earlier drover started (and was killed in) comes first; a machine
    // already terminating is not registered again.
    let unfinished: Option<TakeOutRecord> = StateDir::new(&config.state.dir)
        .read_json(&record_file(&own))
        .unwrap_or(None);
    let resume = unfinished.filter(|r| !r.finished());
    let terminating = identity.target_lifecycle_state.as_deref() == Some("Terminated");
    // A Spot notice already out: the instance has two minutes left. Registering now would
    // only make a host to take out again (a restart after a crash lands here).
    let spot = match imds.spot_action(Duration::from_secs(3)).await {
        Ok(Some(action)) => imds_poll::spot_termination(&own, &action),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("cannot read the Spot notice at start ({e}); polling will tell");
            None
        }
    };
    if let Some(record) = &resume {
        tracing::info!(
            host_id = record.host_id.as_deref().unwrap_or("?"),
            "resuming an unfinished take-out"
        );
        let mut t = Termination::new(&own, Source::Resume);
        t.group = record.group.clone();
        t.hook = record.hook.clone();
        wf.dispatch(t);
    } else if terminating {
        tracing::info!("target lifecycle state is already Terminated; not registering");
        wf.dispatch(Termination::new(&own, Source::ImdsTargetState));
    } else if let Some(t) = spot {
        tracing::info!("a Spot interruption is pending; not registering");
        wf.dispatch(t);
    } else {
        let mut identity = identity.clone();
        match wait_out_warm_pool(&imds, &identity, &mut signals).await {
            WarmPoolWait::NotInPool => {}
            WarmPoolWait::LeftPool(state) => identity.target_lifecycle_state = state,
            // Auto Scaling stops a Warmed:Stopped instance: a clean stop, nothing to undo.
            WarmPoolWait::Stopped(name) => {
                tracing::info!(
                    "{name} while waiting in the warm pool: stopping; nothing was registered"
                );
                return Ok(());
            }
        }
        // The budget starts now: the warm pool may have held the instance for hours.
        let deadline = Instant::now() + config.agent.register_timeout;
        register_identity(&config, &identity, Some(client), deadline).await?;
    }

    tokio::spawn(Arc::clone(&wf).run(rx, stop.clone()));
    if let Some(interval) = config.lifecycle.imds_poll {
        tokio::spawn(imds_poll::watch(
            own.clone(),
            interval,
            tx.clone(),
            stop.clone(),
        ));
    }
    if let Some(queue) = &config.lifecycle.queue_url {
        let sdk = crate::aws::sdk_config(&identity.region).await;
        tokio::spawn(queue::watch(
            Sqs::new(&sdk),
            queue.clone(),
            tx.clone(),
            stop.clone(),
        ));
    }
    notify_systemd(sd_notify::NotifyState::Ready);
    notify_systemd(sd_notify::NotifyState::Status("watching for termination"));
    tracing::info!("watching for termination");

    let name = signals.next().await;
    let already_out = wf.settled(&own).is_some_and(|o| o.settles_message());
    let decision = match config.lifecycle.on_sigterm {
        _ if already_out => None,
        _ if wf.is_in_flight(&own) => Some("a take-out is under way".to_string()),
        OnSigterm::Exit => None,
        OnSigterm::Deregister => Some("lifecycle.on_sigterm is \"deregister\"".to_string()),
        OnSigterm::Auto => machine_going_away(&imds).await,
    };
    notify_systemd(sd_notify::NotifyState::Stopping);
    match decision {
        None if already_out => {
            tracing::info!("{name}: stopping; this host's termination was handled already")
        }
        None => tracing::info!("{name}: stopping; the host stays registered"),
        Some(why) => {
            tracing::info!("{name}: taking the host out before stopping ({why})");
            notify_systemd(sd_notify::NotifyState::Status("taking the host out"));
            extend_systemd_timeout(stop_budget(&config));
            let (t, reply) = Termination::new(&own, Source::Signal).with_reply();
            if tx.send(t).await.is_ok() {
                // Bounded: the workflow gives up after drain_timeout plus its completion
                // and paging budgets; a second signal cuts it short.
                tokio::select! {
                    outcome = reply => tracing::info!("take-out ended: {:?}", outcome.unwrap_or(Outcome::NotCompleted)),
                    second = signals.next() => tracing::warn!("{second} again: stopping now; a restart resumes the take-out"),
                }
            }
        }
    }
    // No new work; what is under way finishes (bounded), then drover exits.
    stop.cancel();
    wf.wait_idle(STOP_WAIT).await;
    Ok(())
}

/// The most a take-out at stop can take: draining, completing the lifecycle action,
/// paging, then the wait for take-outs of peers under way. drover.service's TimeoutStopSec
/// covers this for the default drain_timeout.
pub fn stop_budget(config: &Config) -> Duration {
    config.lifecycle.drain_timeout
        + crate::workflow::COMPLETE_BUDGET
        + crate::workflow::PAGE_BUDGET
        + STOP_WAIT
}

/// How long `run` waits, on stop, for take-outs under way to finish.
const STOP_WAIT: Duration = Duration::from_secs(90);

/// How a wait in the warm pool ended.
enum WarmPoolWait {
    /// The instance was not in a warm pool.
    NotInPool,
    /// Auto Scaling took it out of the pool; its new target lifecycle state.
    LeftPool(Option<String>),
    /// A stop signal came first (Auto Scaling stopping a `Warmed:Stopped` instance).
    Stopped(&'static str),
}

/// In a warm pool the instance waits, stopped or running, until Auto Scaling puts it in
/// service: register only then.
async fn wait_out_warm_pool(
    imds: &Imds,
    identity: &InstanceIdentity,
    signals: &mut StopSignals,
) -> WarmPoolWait {
    let Some(state) = identity
        .target_lifecycle_state
        .clone()
        .filter(|s| is_warm_pool_state(s))
    else {
        return WarmPoolWait::NotInPool;
    };
    tracing::info!(
        "target lifecycle state is {state}: waiting in the warm pool before registering"
    );
    // Ready now, not after registration: a start job pending for hours would hold up boot
    // (multi-user.target waits for it) and the operator's own launch steps with it.
    notify_systemd(sd_notify::NotifyState::Ready);
    notify_systemd(sd_notify::NotifyState::Status(&format!(
        "waiting in the warm pool ({state})"
    )));
    loop {
        tokio::select! {
            name = signals.next() => return WarmPoolWait::Stopped(name),
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        match imds
            .target_lifecycle_state_within(Duration::from_secs(3))
            .await
        {
            Ok(Some(s)) if is_warm_pool_state(&s) => {}
            Ok(s) => {
                tracing::info!(
                    "target lifecycle state is now {}",
                    s.as_deref().unwrap_or("unset")
                );
                return WarmPoolWait::LeftPool(s);
            }
            Err(e) => tracing::debug!("reading the target lifecycle state: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_config() -> Config {
        crate::config::defaults_for_tests()
    }

    /// The value of `key` in a unit file, as a duration.
    fn unit_duration(unit: &str, key: &str) -> Duration {
        let value = unit
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{key} in the unit"));
        humantime::parse_duration(value.trim()).expect("a systemd time span humantime reads")
    }

    #[test]
    fn the_units_stop_timeout_covers_a_take_out_with_default_config() {
        let budget = stop_budget(&default_config());
        for unit in [
            include_str!("../packaging/systemd/drover.service"),
            include_str!("../packaging/systemd/drover-oneshot.service"),
        ] {
            let stop = unit_duration(unit, "TimeoutStopSec");
            assert!(stop > budget, "TimeoutStopSec {stop:?} <= {budget:?}");
            let start = unit_duration(unit, "TimeoutStartSec");
            let register = default_config().agent.register_timeout;
            assert!(
                start > register,
                "TimeoutStartSec {start:?} <= {register:?}"
            );
        }
    }
}
