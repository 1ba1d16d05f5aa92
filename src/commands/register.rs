//! `drover register`: the boot step, within `agent.register_timeout`, as one launch through
//! the workflow's door: the launching action is answered by what the registration did, and a
//! failure pages. `run` builds its registration here too.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::cluster::LazyRancher;
use super::{build_workflow, resolve_group, CommandError};
use crate::autoscaling::AutoScaling;
use crate::boot::{register as boot, RegisterError, RegisterOutcome};
use crate::config::Config;
use crate::imds::{Imds, InstanceIdentity};
use crate::lifecycle::is_warm_pool_state;
use crate::metrics::Metrics;
use crate::work::{Join, JoinFailed, Joined, LaunchOutcome, Work};

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// `drover register`: the whole boot step within `agent.register_timeout`.
pub async fn register(config: Arc<Config>) -> Result<(), CommandError> {
    let deadline = Instant::now() + config.agent.register_timeout;
    let identity = Imds::from_env().identity(left(deadline)).await?;
    tracing::info!(
        instance_id = %identity.instance_id,
        instance_type = %identity.instance_type,
        zone = %identity.availability_zone,
        "read instance identity from IMDS"
    );
    let sdk = crate::aws::sdk_config(&identity.region).await;
    let cluster = LazyRancher::new(config.clone());
    let workflow = build_workflow(
        &config,
        &identity,
        cluster.clone(),
        AutoScaling::new(&sdk),
        &Metrics::off(),
    )?;
    let stop = CancellationToken::new();
    let intake = stop.child_token();
    let tracker = TaskTracker::new();
    let door = workflow.start(intake.clone(), stop.clone(), &tracker);

    let join = match warm_pool_state(&identity) {
        Some(state) => {
            tracing::info!(
                "target lifecycle state is {state}: the instance is in a warm pool; not registering"
            );
            None
        }
        None => Some(join(config.clone(), identity.clone(), cluster, deadline)),
    };
    let (work, reply) = Work::launch(join, deadline);
    let outcome = match door.send(work).await {
        Ok(()) => reply.await.unwrap_or(LaunchOutcome::Interrupted),
        Err(_) => LaunchOutcome::Interrupted,
    };
    intake.cancel();
    tracker.close();
    tracker.wait().await;
    match outcome {
        LaunchOutcome::Registered { .. } | LaunchOutcome::NotRegistered => Ok(()),
        LaunchOutcome::Failed(why) => Err(CommandError::Boot(why)),
        LaunchOutcome::Interrupted => Err(CommandError::Boot("cut short".into())),
    }
}

/// The target lifecycle state when it puts the instance in a warm pool.
pub(super) fn warm_pool_state(identity: &InstanceIdentity) -> Option<String> {
    identity
        .target_lifecycle_state
        .clone()
        .filter(|s| is_warm_pool_state(s))
}

/// The registration of the instance `identity` describes, for the workflow to run: the
/// group, the Rancher connection, the boot workflow; gives up at `deadline`.
pub(super) fn join(
    config: Arc<Config>,
    identity: InstanceIdentity,
    cluster: LazyRancher,
    deadline: Instant,
) -> Join {
    Join::new(async move {
        let span = tracing::info_span!(
            "host",
            instance_id = %identity.instance_id,
            host_id = tracing::field::Empty
        );
        let work = async {
            let group = resolve_group(&identity).await;
            if let Some(g) = &group {
                tracing::info!(group = %g, "instance is in an Auto Scaling group");
            }
            cluster.connect(deadline).await.map_err(|e| JoinFailed {
                step: "connect to Rancher".into(),
                error: e.to_string(),
            })?;
            let docker = crate::docker::Settings::from_env();
            let outcome = boot(
                &config,
                &docker,
                &identity,
                group.as_deref(),
                &cluster,
                deadline,
            )
            .await
            .map_err(failed)?;
            Ok(match outcome {
                RegisterOutcome::AlreadyActive { host_id, stale } => {
                    tracing::info!("already registered; nothing changed");
                    Joined {
                        host_id,
                        stale,
                        already_active: true,
                    }
                }
                RegisterOutcome::Registered { host_id, stale, .. } => {
                    tracing::info!("registered");
                    Joined {
                        host_id,
                        stale,
                        already_active: false,
                    }
                }
            })
        }
        .instrument(span);
        // Every step already watches the deadline; this is the hard stop should one not.
        match tokio::time::timeout_at(deadline + Duration::from_secs(5), work).await {
            Ok(result) => result,
            Err(_) => Err(JoinFailed {
                step: "register".into(),
                error: format!(
                    "gave up after agent.register_timeout ({})",
                    crate::retry::rounded(config.agent.register_timeout)
                ),
            }),
        }
    })
}

fn failed(e: RegisterError) -> JoinFailed {
    let error = match &e {
        RegisterError::Cluster { source, .. } => source.to_string(),
        other => other.to_string(),
    };
    JoinFailed {
        step: e.step().to_string(),
        error,
    }
}
