//! drover joins EC2 container hosts to a Rancher 1.x (Cattle) environment at boot and takes
//! them out cleanly when Auto Scaling terminates them.
//!
//! # Architecture
//!
//! Data flows one way: **sources → one [`Work`](work::Work) value → the workflow → the
//! clients**. Nothing calls back up; the only thing that travels back is the outcome a
//! source waits for (an SQS message is deleted only once its hook is completed).
//!
//! - [`sources`]: the producers. Startup (resume, terminating or Spot at start), IMDS
//!   polling, the SQS queue, signals (which also decide what a stop means), the reaper
//!   (sweeps for hosts whose instance died without a clean stop). Each sends
//!   [`work::Work`] through the one door, an mpsc channel.
//! - [`workflow`]: the one consumer. It runs the launch (the registration between looking
//!   up the launching action and answering it; a termination of this instance cuts it
//!   short), de-duplicates work by instance, takes the host out as named steps, answers
//!   the lifecycle action, pages; it talks only to traits:
//!   [`cluster::Cluster`], [`cluster::LocalAgent`], [`lifecycle::LifecycleActions`],
//!   [`pager::Paging`]. [`boot`] is the boot workflow, over the same cluster trait.
//! - The clients, one module per outside system, each owning its settings and its error
//!   and knowing nothing of the others: [`imds`], [`rancher`] (the Cattle API, and the
//!   [`cluster::Cluster`] built on it), [`docker`], [`autoscaling`], [`sqs`], [`ssm`],
//!   [`pager`], [`logging`], [`systemd`]. Leaves they share: [`text`] (log-safe text),
//!   [`labels`], [`retry`], [`state`], [`memory`], [`tls`] (the one TLS config of drover's own
//!   HTTPS clients), [`secret`] (where a secret is and reading it before
//!   a deadline, over a parameter-store trait that [`ssm`] implements).
//! - [`config`] loads and validates everything up front and builds the clients' settings;
//!   [`commands`] wires a subcommand to its sources, workflow and clients. `main.rs` only
//!   calls [`commands::main`].
//!
//! - [`metrics`]: the textfile the workflow, the queue source, the reaper and the pager
//!   report [`metrics::Event`]s to, through a handle passed down (a no-op when off);
//!   nothing reads it back.
//!
//! Shutdown is one cancellation token passed down (a child of it closes the door); work
//! under way runs on a `TaskTracker`, so that a stop waits for it, bounded.

#[cfg(feature = "aws")]
pub mod autoscaling;
#[cfg(feature = "aws")]
pub mod aws;
pub mod boot;
pub mod cli;
pub mod cluster;
#[cfg(feature = "aws")]
pub mod commands;
pub mod config;
pub mod docker;
pub mod imds;
pub mod labels;
pub mod lifecycle;
pub mod logging;
pub mod memory;
pub mod message;
pub mod metrics;
pub mod pager;
pub mod rancher;
pub mod retry;
pub mod secret;
pub mod sources;
#[cfg(feature = "aws")]
pub mod sqs;
#[cfg(feature = "aws")]
pub mod ssm;
pub mod state;
pub mod systemd;
pub mod text;
pub mod tls;
pub mod work;
pub mod workflow;

/// Entry points for the fuzz targets in `fuzz/` (see fuzz/README.md): the parsers of
/// outside input that are not public otherwise, each behind a thin wrapper. Not an API.
#[doc(hidden)]
pub mod fuzzing {
    use std::net::Ipv4Addr;
    use std::path::PathBuf;

    use reqwest::{Method, StatusCode};
    use url::Url;

    use crate::config::{Config, ConfigError, Sources};
    use crate::imds::{ImdsError, SpotAction};
    use crate::rancher::client;
    use crate::rancher::{Host, Project, RancherError, RegistrationToken};

    pub use crate::message::{excerpt_for_log, parse as lifecycle_message};

    /// The server the Rancher answers below pretend to come from.
    pub const RANCHER_BASE: &str = "https://rancher.example.com";
    const RANCHER_URL: &str = "https://rancher.example.com/v2-beta/projects/1a5/hosts";

    /// A collection of hosts (`GET .../hosts`): the items and the raw `pagination.next`.
    pub fn rancher_hosts_page(body: &[u8]) -> Result<(Vec<Host>, Option<String>), RancherError> {
        client::decode_page(&Method::GET, RANCHER_URL, body)
    }

    /// A collection of registration tokens.
    pub fn rancher_tokens_page(
        body: &[u8],
    ) -> Result<(Vec<RegistrationToken>, Option<String>), RancherError> {
        client::decode_page(&Method::GET, RANCHER_URL, body)
    }

    /// One host (`GET .../hosts/{id}`, or the answer to a host action).
    pub fn rancher_host(body: &[u8]) -> Result<Host, RancherError> {
        client::decode(&Method::POST, RANCHER_URL, body)
    }

    /// One registration token (`GET` one, or the answer to creating one).
    pub fn rancher_token(body: &[u8]) -> Result<RegistrationToken, RancherError> {
        client::decode(&Method::POST, RANCHER_URL, body)
    }

    /// The project a key works in.
    pub fn rancher_project(body: &[u8]) -> Result<Project, RancherError> {
        client::decode(&Method::GET, RANCHER_URL, body)
    }

    /// The error for a non-2xx answer; `None` for a number that is no HTTP status.
    pub fn rancher_error(status: u16, body: &[u8]) -> Option<RancherError> {
        let status = StatusCode::from_u16(status).ok()?;
        Some(client::api_error(&Method::GET, RANCHER_URL, status, body))
    }

    /// Where a `pagination.next` link leads from [`RANCHER_BASE`]; `None` on the last page.
    pub fn rancher_next_page(link: Option<String>) -> Result<Option<Url>, RancherError> {
        let base = Url::parse(RANCHER_BASE).map_err(|e| RancherError::Protocol(e.to_string()))?;
        client::next_page(&base, link)
    }

    /// The host that `find_host_by_instance` picks among `hosts`: the first of
    /// `find_hosts_by_instance`.
    pub fn rancher_pick_host(hosts: Vec<Host>, instance_id: &str) -> Option<Host> {
        client::hosts_of_instance(hosts, instance_id)
            .into_iter()
            .next()
    }

    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT`: the endpoint in use, or the value refused.
    pub fn imds_endpoint(value: &str) -> Result<String, String> {
        crate::imds::parse_endpoint(value)
    }

    /// An IPv4 answer (`meta-data/local-ipv4`, `meta-data/public-ipv4`).
    pub fn imds_ipv4(value: &str) -> Result<Ipv4Addr, ImdsError> {
        crate::imds::parse_ipv4("meta-data/local-ipv4", value)
    }

    /// A `spot/instance-action` answer, decoded as [`crate::imds::Imds::spot_action`] does.
    pub fn imds_spot_action(body: &str) -> Result<SpotAction, serde_json::Error> {
        serde_json::from_str(body)
    }

    /// [`Config::load`] with the file's text given (as if read from `/etc/drover/drover.toml`).
    pub fn config(
        text: &str,
        env: Vec<(String, String)>,
        overrides: &[String],
    ) -> Result<Config, ConfigError> {
        Config::load_text(
            text,
            Sources {
                path: PathBuf::from(crate::config::DEFAULT_CONFIG_PATH),
                path_explicit: true,
                env,
                overrides,
            },
        )
    }
}
