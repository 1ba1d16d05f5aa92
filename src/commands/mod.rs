//! The subcommands, each in a module of its own: `register`, `deregister`, `run`, `check`,
//! `reap`, `status`.
//! Each builds the clients it needs from the config, wires them to a workflow, and maps
//! the result to an exit code; this module holds the entry point and the shared wiring.

mod check;
mod cluster;
mod deregister;
mod reap;
mod register;
mod run;
mod status;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use tokio::time::Instant;

use crate::autoscaling::AutoScaling;
use crate::cli::{Cli, Command};
use crate::cluster::ClusterError;
use crate::config::{Config, Sources, DEFAULT_CONFIG_PATH};
use crate::docker::{DockerAgent, Settings as DockerSettings};
use crate::imds::{ImdsError, InstanceIdentity};
use crate::lifecycle::LifecycleActions;
use crate::metrics::Metrics;
use crate::pager::Pager;
use crate::rancher::{RancherClient, RancherError};
use crate::retry;
use crate::secret::{ParameterStore, Secret, SecretError, SecretReader, SharedStore, Why};
use crate::ssm::SsmOnDemand;
use crate::state::{Records, StateDir};
use crate::workflow::{self, Workflow};

pub use run::stop_budget;

/// Exit code for bad usage or bad config.
pub const EXIT_USAGE: u8 = 2;

/// A failure of a subcommand, shown to the operator as one readable chain.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("reading instance metadata: {0}")]
    Imds(#[from] ImdsError),
    #[error("registering: {0}")]
    Boot(String),
    #[error("connecting to Rancher: {0}")]
    Cluster(#[from] ClusterError),
    #[error("{0} check(s) failed")]
    ChecksFailed(usize),
    #[error("deregistering: {0}")]
    Deregister(String),
    #[error("reaping: {0}")]
    Reap(String),
    #[error("cannot tell: {0}")]
    CannotTell(String),
    #[error("{0}")]
    Setup(String),
}

/// The whole program: parse, load config, run the subcommand, map the result to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let sources = Sources {
        path: cli
            .config
            .clone()
            .unwrap_or_else(|| DEFAULT_CONFIG_PATH.into()),
        path_explicit: cli.config.is_some(),
        env: std::env::vars().collect(),
        overrides: &cli.set,
    };
    let config = match Config::load(sources) {
        Ok(c) => with_parameter_store(c),
        Err(e) => {
            if cli.command == Command::Check {
                println!("{:<5} {:<12} {}", "FAIL", "config", e);
            }
            eprintln!("drover: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    crate::logging::init(&config.log);
    // `check` prints them as its own `warn` lines: once is enough.
    if cli.command != Command::Check {
        for warning in &config.warnings {
            tracing::warn!("{warning}");
        }
    }

    // One thread is plenty for a host agent and keeps its footprint small.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drover: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = std::sync::Arc::new(config);
    let result = runtime.block_on(async {
        match cli.command {
            Command::Register => register::register(config.clone()).await,
            Command::Deregister { if_going_away } => {
                deregister::deregister(config.clone(), if_going_away).await
            }
            Command::Run => run::run(config.clone()).await,
            Command::Check => check::check(&config).await,
            Command::Reap { dry_run } => reap::reap(config.clone(), dry_run).await,
            Command::Status { json } => status::status(&config, json).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Logs go to stderr: this line is the one place the failure is said.
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// An SSM client made on first use, for a secret that needs one; `None` for the others.
fn parameter_store_for(secret: &Secret) -> Option<Arc<dyn ParameterStore>> {
    secret
        .needs_store()
        .then(|| Arc::new(SsmOnDemand::new()) as Arc<dyn ParameterStore>)
}

/// The config with an SSM client (made on first use) for a routing key kept in SSM, so
/// that every `Pager::new(&config.pager)` can read it.
fn with_parameter_store(mut config: Config) -> Config {
    if let Some(store) = config
        .pager
        .pagerduty_routing_key
        .as_ref()
        .and_then(parameter_store_for)
    {
        config.pager.parameter_store = Some(SharedStore(store));
    }
    config
}

/// The Rancher secret key's reader: its source, and an SSM client when it is kept there.
fn rancher_key_reader(config: &Config) -> SecretReader {
    let secret = &config.rancher.secret_key;
    SecretReader::new(secret.clone(), parameter_store_for(secret))
}

/// A secret that could not be had before the deadline is out of time; any other failure
/// is one retrying does not fix.
fn secret_failed(e: SecretError) -> ClusterError {
    match e.why {
        Why::NeverAppeared { .. } | Why::StillEmpty { .. } | Why::OutOfTime { .. } => {
            ClusterError::OutOfTime(e.to_string())
        }
        _ => ClusterError::Backend(Box::new(e)),
    }
}

/// The Rancher client: the secret key read from its source (a file waited for, SSM
/// retried), then transient failures retried, all until `deadline`. When Rancher later
/// answers 401, the client reads the key again from its source (a rotated key).
async fn connect_rancher(
    config: &Config,
    deadline: Instant,
) -> Result<RancherClient, ClusterError> {
    let reader = rancher_key_reader(config);
    let key = reader.read(deadline).await.map_err(secret_failed)?;
    let client = retry::until(
        "connecting to Rancher",
        deadline,
        Duration::from_secs(5),
        RancherError::is_transient,
        || RancherClient::connect(&config.rancher, key.clone()),
    )
    .await?;
    Ok(client.with_rereader(reader, config.rancher.request_timeout))
}

/// The group: from the instance tags when metadata tags are on, else from Auto Scaling.
/// Not knowing it only costs a label, so a failure here is a warning.
async fn resolve_group(identity: &InstanceIdentity) -> Option<String> {
    if let Some(g) = &identity.autoscaling_group {
        return Some(g.clone());
    }
    let sdk = crate::aws::sdk_config(&identity.region).await;
    let asg = AutoScaling::new(&sdk);
    let asked = tokio::time::timeout(
        Duration::from_secs(20),
        asg.membership(&identity.instance_id),
    )
    .await;
    match asked {
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

/// The workflow over the real clients.
type RealWorkflow = Workflow<cluster::LazyRancher, AutoScaling, DockerAgent, Pager>;

/// The reaper over the real clients, sharing the workflow's Rancher connection.
type RealReaper = crate::sources::reaper::Reaper<cluster::LazyRancher, AutoScaling, Pager>;

/// Builds the reaper of `run` and `reap`; `dry_run` on top of `reaper.dry_run`.
fn build_reaper(
    config: &Config,
    identity: &InstanceIdentity,
    cluster: cluster::LazyRancher,
    asg: AutoScaling,
    dry_run: bool,
    metrics: &Metrics,
) -> Result<RealReaper, CommandError> {
    let pager = Pager::new(&config.pager)
        .map_err(|e| CommandError::Setup(e.to_string()))?
        .with_metrics(metrics.clone());
    let r = &config.reaper;
    let settings = crate::sources::reaper::Settings {
        own_instance: identity.instance_id.clone(),
        own_region: identity.region.clone(),
        environment: config.rancher.project_id.clone(),
        interval: r.interval,
        max_per_sweep: r.max_per_sweep,
        dry_run: dry_run || r.dry_run,
    };
    Ok(crate::sources::reaper::Reaper::new(
        settings,
        cluster,
        asg,
        pager,
        Records::new(StateDir::new(&config.state.dir)),
    )
    .with_metrics(metrics.clone()))
}

/// Builds the workflow shared by `register`, `run` and `deregister`. `metrics` counts
/// what it does (and what its pager sends).
fn build_workflow(
    config: &Config,
    identity: &InstanceIdentity,
    cluster: cluster::LazyRancher,
    asg: AutoScaling,
    metrics: &Metrics,
) -> Result<RealWorkflow, CommandError> {
    let pager = Pager::new(&config.pager)
        .map_err(|e| CommandError::Setup(e.to_string()))?
        .with_metrics(metrics.clone());
    let l = &config.lifecycle;
    let settings = workflow::Settings {
        own_instance: identity.instance_id.clone(),
        own_group: identity.autoscaling_group.clone(),
        drain_timeout: l.drain_timeout,
        on_failure: l.on_failure,
        evacuate: l.evacuate,
        handle_peers: l.handle_peers,
        hook_name: l.hook_name.clone(),
        launch_hook: l.launch_hook.clone(),
        cluster_url: config.rancher.url.to_string(),
    };
    Ok(Workflow::new(
        settings,
        cluster,
        asg,
        DockerAgent::new(DockerSettings::from_env()),
        pager,
        Records::new(StateDir::new(&config.state.dir)),
    )
    .with_metrics(metrics.clone()))
}
