//! The startup source: what the state at start calls for, before anything registers. A
//! take-out an earlier drover started (and was killed in) comes first; a machine already
//! terminating, or with a Spot notice out, is taken out rather than registered again (a
//! restart after a crash lands here).

use std::time::Duration;

use super::imds_poll::spot_termination;
use crate::imds::{Imds, InstanceIdentity};
use crate::state::Records;
use crate::work::{Source, Termination};

/// How long the Spot notice is asked for at start; polling tells later anyway.
const SPOT_READ_BUDGET: Duration = Duration::from_secs(3);

/// The termination the state at start calls for; `None`: register as usual.
pub async fn at_start(
    records: &Records,
    identity: &InstanceIdentity,
    imds: &Imds,
) -> Option<Termination> {
    let own = identity.instance_id.as_str();
    if let Some(record) = records.read(own).filter(|r| !r.finished()) {
        tracing::info!(
            host_id = record.host_id.as_deref().unwrap_or("?"),
            "resuming an unfinished take-out"
        );
        let mut t = Termination::new(own, Source::Resume);
        t.group = record.group;
        t.hook = record.hook;
        return Some(t);
    }
    if identity.target_lifecycle_state.as_deref() == Some("Terminated") {
        tracing::info!("target lifecycle state is already Terminated; not registering");
        return Some(Termination::new(own, Source::ImdsTargetState));
    }
    // A Spot notice already out: the instance has two minutes left. Registering now would
    // only make a host to take out again.
    match imds.spot_action(SPOT_READ_BUDGET).await {
        Ok(Some(action)) => {
            let t = spot_termination(own, &action)?;
            tracing::info!("a Spot interruption is pending; not registering");
            Some(t)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("cannot read the Spot notice at start ({e}); polling will tell");
            None
        }
    }
}
