//! `drover deregister`: one termination of this instance through the workflow's door, and
//! the wait for its outcome.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cluster::LazyRancher;
use super::{build_workflow, CommandError};
use crate::autoscaling::AutoScaling;
use crate::config::Config;
use crate::imds::Imds;
use crate::metrics::Metrics;
use crate::sources::signal::machine_going_away;
use crate::work::{Outcome, Source, Termination, Work};

/// `drover deregister`: take this host out now and complete its lifecycle action. With
/// `if_going_away`, only when the machine is going away.
pub async fn deregister(config: Arc<Config>, if_going_away: bool) -> Result<(), CommandError> {
    let imds = Imds::from_env();
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
    let sdk = crate::aws::sdk_config(&identity.region).await;
    // Connected by the take-out's first step, within its budget; a Rancher that cannot be
    // reached is a failed take-out, paged, with the lifecycle action still answered.
    let cluster = LazyRancher::new(config.clone());
    let workflow = build_workflow(
        &config,
        &identity,
        cluster,
        AutoScaling::new(&sdk),
        &Metrics::off(),
    )?;

    let stop = CancellationToken::new();
    let intake = stop.child_token();
    let tracker = TaskTracker::new();
    let door = workflow.start(intake.clone(), stop.clone(), &tracker);
    let (work, reply) = Work::terminate(Termination::new(&identity.instance_id, Source::Command));
    let outcome = match door.send(work).await {
        Ok(()) => reply.await.unwrap_or(Outcome::NotCompleted),
        Err(_) => Outcome::NotCompleted,
    };
    intake.cancel();
    tracker.close();
    tracker.wait().await;
    match outcome {
        Outcome::Done => Ok(()),
        Outcome::FailedButCompleted => Err(CommandError::Deregister(
            "taking the host out failed (paged; lifecycle action answered with lifecycle.on_failure)".into(),
        )),
        Outcome::NotCompleted => Err(CommandError::Deregister(
            "the lifecycle action could not be completed (paged)".into(),
        )),
        Outcome::NotHere => Err(CommandError::Deregister(format!("{outcome:?}"))),
    }
}
