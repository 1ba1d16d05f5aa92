//! The cluster as the commands hand it to the workflows: Rancher, connected on first use.
//!
//! The workflow starts before anything talks to Rancher, so that every termination source
//! is watched from the first second and a Rancher that is down (or a secret that is not
//! there yet) is a failed registration, paged and answered, not a drover that never started.

use std::sync::Arc;

use tokio::sync::OnceCell;
use tokio::time::Instant;

use super::connect_rancher;
use crate::cluster::{
    AgentRegistration, Cluster, ClusterError, ClusterHost, EnvHost, Step, StepDone, StepFailed,
};
use crate::config::Config;
use crate::rancher::Rancher1;

/// Rancher 1.x, connected (the API version found, the key checked) by whichever call comes
/// first, within that call's deadline; a failed connect is tried again by the next call.
#[derive(Clone)]
pub struct LazyRancher {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<Config>,
    rancher: OnceCell<Rancher1>,
}

impl LazyRancher {
    pub fn new(config: Arc<Config>) -> LazyRancher {
        LazyRancher {
            inner: Arc::new(Inner {
                config,
                rancher: OnceCell::new(),
            }),
        }
    }

    /// Connects now, unless connected already.
    pub async fn connect(&self, deadline: Instant) -> Result<&Rancher1, ClusterError> {
        self.inner
            .rancher
            .get_or_try_init(|| async {
                let client = connect_rancher(&self.inner.config, deadline).await?;
                Ok(Rancher1::new(client))
            })
            .await
    }
}

impl Cluster for LazyRancher {
    fn describe(&self) -> String {
        match self.inner.rancher.get() {
            Some(rancher) => rancher.describe(),
            None => format!(
                "rancher project {} at {} (not connected yet)",
                self.inner.config.rancher.project_id, self.inner.config.rancher.url
            ),
        }
    }

    async fn find_hosts(
        &self,
        instance_id: &str,
        deadline: Instant,
    ) -> Result<Vec<ClusterHost>, ClusterError> {
        self.connect(deadline)
            .await?
            .find_hosts(instance_id, deadline)
            .await
    }

    async fn hosts(&self, deadline: Instant) -> Result<Vec<EnvHost>, ClusterError> {
        self.connect(deadline).await?.hosts(deadline).await
    }

    fn connected_labelled_last_listed(&self) -> Option<usize> {
        self.inner
            .rancher
            .get()
            .and_then(Rancher1::connected_labelled_last_listed)
    }

    async fn host(
        &self,
        host_id: &str,
        deadline: Instant,
    ) -> Result<Option<ClusterHost>, ClusterError> {
        self.connect(deadline).await?.host(host_id, deadline).await
    }

    async fn registration(&self, deadline: Instant) -> Result<AgentRegistration, ClusterError> {
        self.connect(deadline).await?.registration(deadline).await
    }

    async fn take_step(
        &self,
        host_id: &str,
        step: Step,
        deadline: Instant,
    ) -> Result<StepDone, StepFailed> {
        match self.connect(deadline).await {
            Ok(rancher) => rancher.take_step(host_id, step, deadline).await,
            Err(e) => Err(StepFailed {
                state: "unknown".into(),
                error: format!("connecting to Rancher: {e}"),
                events: Vec::new(),
            }),
        }
    }
}
