//! `drover register`: the boot step, within `agent.register_timeout`.

use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::{connect_rancher, resolve_group, CommandError};
use crate::boot::{register as boot, RegisterOutcome};
use crate::config::Config;
use crate::imds::{Imds, InstanceIdentity};
use crate::lifecycle::is_warm_pool_state;
use crate::rancher::{Rancher1, RancherClient};

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// `drover register`: the whole boot step within `agent.register_timeout`.
pub async fn register(config: &Config) -> Result<(), CommandError> {
    let deadline = Instant::now() + config.agent.register_timeout;
    let identity = Imds::from_env().identity(left(deadline)).await?;
    register_identity(config, &identity, None, deadline).await
}

/// Registers the instance `identity` describes, reusing a Rancher client when the caller
/// has one; gives up at `deadline`.
pub(super) async fn register_identity(
    config: &Config,
    identity: &InstanceIdentity,
    client: Option<RancherClient>,
    deadline: Instant,
) -> Result<(), CommandError> {
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
        let docker = crate::docker::Settings::from_env();
        let outcome = boot(
            config,
            &docker,
            identity,
            group.as_deref(),
            &cluster,
            deadline,
        )
        .await?;
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
        Err(_) => Err(CommandError::RegisterTimeout(config.agent.register_timeout)),
    }
}
