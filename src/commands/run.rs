//! `drover run`: the resident daemon. The workflow's consumer starts first; then every
//! termination source (IMDS, queue, signals), all sending into the one door, so that a
//! termination is noticed from the first second; then the startup source (resume,
//! terminating or Spot at start) or the launch: the registration, run by the workflow,
//! which a termination of this instance cuts short. Once the instance is in service, the
//! reaper sweeps (when `reaper.enabled`), into the same door. The signal source decides what
//! a stop means and winds the daemon down.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cluster::LazyRancher;
use super::register::{join, warm_pool_state};
use super::{build_reaper, build_workflow, CommandError};
use crate::autoscaling::AutoScaling;
use crate::config::Config;
use crate::imds::{Imds, InstanceIdentity};
use crate::lifecycle::is_warm_pool_state;
use crate::metrics::Metrics;
use crate::sources::signal::{self, StopSignals};
use crate::sources::{imds_poll, queue, reaper, startup};
use crate::sqs::Sqs;
use crate::state::{Records, StateDir};
use crate::work::{LaunchOutcome, Work};
use crate::workflow::{COMPLETE_BUDGET, PAGE_BUDGET};

/// How long `run` waits, on stop, for work under way (a peer's take-out) to finish.
const STOP_WAIT: Duration = Duration::from_secs(90);
/// How long the last hand-backs of queue messages may take once the work is cut short.
const HAND_BACK_WAIT: Duration = Duration::from_secs(15);
/// How often a warm-pool instance looks whether it left the pool.
const WARM_POOL_POLL: Duration = Duration::from_secs(5);

/// The most a take-out at stop can take: draining, completing the lifecycle action,
/// paging, then the wait for take-outs of peers under way. drover.service's TimeoutStopSec
/// covers this for the default drain_timeout.
pub fn stop_budget(config: &Config) -> Duration {
    config.lifecycle.drain_timeout + COMPLETE_BUDGET + PAGE_BUDGET + STOP_WAIT
}

/// `drover run`: watch every termination source, register, tell systemd, take the host out
/// on the first termination, and stay up until SIGTERM.
pub async fn run(config: Arc<Config>) -> Result<(), CommandError> {
    // Signals first: a SIGTERM during start-up must not kill drover mid-step.
    let signals = StopSignals::install()
        .map_err(|e| CommandError::Setup(format!("cannot install signal handlers: {e}")))?;
    let imds = Imds::from_env();
    let identity = imds.identity(config.agent.register_timeout).await?;
    let own = identity.instance_id.clone();

    // Start-up may take register_timeout plus an image pull; more than the unit's
    // TimeoutStartSec when an operator raised register_timeout.
    crate::systemd::extend_timeout(config.agent.register_timeout + Duration::from_secs(300));
    let sdk = crate::aws::sdk_config(&identity.region).await;
    // One cluster serves the registration and the workflow; it connects on first use.
    let cluster = LazyRancher::new(config.clone());

    // The one stop: `intake` ends new work (the first signal), `stop` ends everything (a
    // second signal, or the stop wait running out).
    let stop = CancellationToken::new();
    let intake = stop.child_token();
    let tracker = TaskTracker::new();
    // Only the daemon writes the textfile: a one-shot run by hand next to it (register,
    // deregister, reap) would replace its counters with its own.
    let metrics = Metrics::to_textfile(config.metrics.textfile.as_deref());
    let workflow = build_workflow(
        &config,
        &identity,
        cluster.clone(),
        AutoScaling::new(&sdk),
        &metrics,
    )?;
    let door = workflow.start(intake.clone(), stop.clone(), &tracker);

    // Every source from the first second: a termination while registering cuts the
    // registration short.
    if let Some(interval) = config.lifecycle.imds_poll {
        tracker.spawn(imds_poll::watch(
            imds.clone(),
            own.clone(),
            interval,
            identity.target_lifecycle_state.clone(),
            door.clone(),
            intake.clone(),
        ));
    }
    if let Some(url) = &config.lifecycle.queue_url {
        let queue = queue::Queue {
            sqs: Sqs::new(&sdk),
            url: url.clone(),
            metrics: metrics.clone(),
        };
        tracker.spawn(queue::watch(
            queue,
            door.clone(),
            intake.clone(),
            stop.clone(),
            tracker.clone(),
        ));
    }
    let policy = signal::Policy {
        on_sigterm: config.lifecycle.on_sigterm,
        own_instance: own.clone(),
        budget: stop_budget(&config),
    };
    // Not on the tracker: after the first signal it waits for a second one.
    let signals = tokio::spawn(signal::watch(
        signals,
        policy,
        imds.clone(),
        door.clone(),
        intake.clone(),
        stop.clone(),
    ));

    let records = Records::new(StateDir::new(&config.state.dir));
    let mut in_service = false;
    let started = match startup::at_start(&records, &identity, &imds).await {
        Some(termination) => {
            let _ = door
                .send(Work::Terminate {
                    termination,
                    reply: None,
                })
                .await;
            Ok(())
        }
        None => {
            in_service = true;
            launch(&config, &identity, &imds, cluster.clone(), &door, &intake).await
        }
    };
    if let Err(e) = started {
        // Registration failed (paged, answered): nothing to watch for; systemd restarts.
        intake.cancel();
        stop.cancel();
        tracker.close();
        let _ = tokio::time::timeout(HAND_BACK_WAIT, tracker.wait()).await;
        signals.abort();
        return Err(e);
    }
    // Out of the warm pool (or never in one), and not on its way out: the reaper sweeps
    // from here on, its first sweep an interval or more from now.
    if in_service && config.reaper.enabled && !intake.is_cancelled() {
        match build_reaper(
            &config,
            &identity,
            cluster,
            AutoScaling::new(&sdk),
            false,
            &metrics,
        ) {
            Ok(sweeper) => {
                tracker.spawn(reaper::watch(sweeper, door.clone(), intake.clone()));
            }
            Err(e) => tracing::error!("the reaper cannot start: {e}"),
        }
    }
    crate::systemd::ready();
    // Start-up is over: what it freed need not stay resident while the host idles.
    crate::memory::release_freed();
    if !intake.is_cancelled() {
        crate::systemd::status("watching for termination");
        tracing::info!("watching for termination");
    }
    drop(door);

    intake.cancelled().await;
    // No new work; what is under way finishes (bounded), then drover exits. A second
    // signal cuts the wait short.
    tracker.close();
    if tokio::time::timeout(STOP_WAIT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            "stopping with work still under way after {}; a restart resumes it",
            crate::retry::rounded(STOP_WAIT)
        );
    }
    stop.cancel();
    if tokio::time::timeout(HAND_BACK_WAIT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("stopping before every queue message was handed back");
    }
    let _ = signals.await;
    Ok(())
}

/// The way in: a warm pool is waited out (its launching action answered first), then the
/// registration goes through the door. `Ok` also when a termination or a stop cut it short.
async fn launch(
    config: &Arc<Config>,
    identity: &InstanceIdentity,
    imds: &Imds,
    cluster: LazyRancher,
    door: &mpsc::Sender<Work>,
    intake: &CancellationToken,
) -> Result<(), CommandError> {
    let mut identity = identity.clone();
    if let Some(state) = warm_pool_state(&identity) {
        // The launching action that holds the instance on its way into the pool.
        let (work, reply) = Work::launch(None, Instant::now() + config.agent.register_timeout);
        if door.send(work).await.is_ok() {
            let _ = reply.await;
        }
        match wait_out_warm_pool(imds, &state, intake).await {
            Some(state) => identity.target_lifecycle_state = state,
            // Auto Scaling stops a Warmed:Stopped instance: a clean stop, nothing to undo.
            None => {
                tracing::info!("stopping while waiting in the warm pool; nothing was registered");
                return Ok(());
            }
        }
    }
    // The budget starts now: the warm pool may have held the instance for hours.
    let deadline = Instant::now() + config.agent.register_timeout;
    let (work, reply) = Work::launch(
        Some(join(config.clone(), identity, cluster, deadline)),
        deadline,
    );
    if door.send(work).await.is_err() {
        return Ok(());
    }
    match reply.await {
        Ok(LaunchOutcome::Registered { .. } | LaunchOutcome::NotRegistered) => Ok(()),
        Ok(LaunchOutcome::Failed(why)) => Err(CommandError::Boot(why)),
        Ok(LaunchOutcome::Interrupted) | Err(_) => {
            tracing::info!("registration cut short by a termination or a stop");
            Ok(())
        }
    }
}

/// In a warm pool the instance waits, stopped or running, until Auto Scaling puts it in
/// service: register only then. The new target lifecycle state; `None` when drover is
/// stopped first.
async fn wait_out_warm_pool(
    imds: &Imds,
    state: &str,
    intake: &CancellationToken,
) -> Option<Option<String>> {
    tracing::info!(
        "target lifecycle state is {state}: waiting in the warm pool before registering"
    );
    // Ready now, not after registration: a start job pending for hours would hold up boot
    // (multi-user.target waits for it) and the operator's own launch steps with it.
    crate::systemd::ready();
    crate::systemd::status(&format!("waiting in the warm pool ({state})"));
    loop {
        tokio::select! {
            () = intake.cancelled() => return None,
            () = tokio::time::sleep(WARM_POOL_POLL) => {}
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
                return Some(s);
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
            include_str!("../../packaging/systemd/drover.service"),
            include_str!("../../packaging/systemd/drover-oneshot.service"),
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
