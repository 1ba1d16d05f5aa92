//! drover joins EC2 container hosts to a Rancher 1.x (Cattle) environment at boot and takes
//! them out cleanly when Auto Scaling terminates them.
//!
//! # Architecture
//!
//! One module per outside system, each a small client that knows nothing of the others:
//! [`imds`] (IMDSv2), [`rancher`] (the Cattle API), [`docker`] (the agent containers),
//! [`autoscaling`] and [`sqs`] (AWS). [`cluster`] puts the cluster manager behind a trait;
//! [`register`] is the boot workflow over those clients; [`app`] wires a subcommand to its
//! workflow; [`config`] loads and validates everything up front.
//!
//! Data flows one way: config → clients → workflow → state dir. Nothing calls back up.

pub mod app;
pub mod autoscaling;
pub mod aws;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod docker;
pub mod imds;
pub mod lifecycle;
pub mod logging;
pub mod message;
pub mod pager;
pub mod rancher;
pub mod register;
pub mod retry;
pub mod sources;
pub mod sqs;
pub mod state;
pub mod termination;
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
    use crate::rancher::{Host, Project, RancherError, RegistrationToken};

    pub use crate::message::{excerpt_for_log, parse as lifecycle_message};

    /// The server the Rancher answers below pretend to come from.
    pub const RANCHER_BASE: &str = "https://rancher.example.com";
    const RANCHER_URL: &str = "https://rancher.example.com/v2-beta/projects/1a5/hosts";

    /// A collection of hosts (`GET .../hosts`): the items and the raw `pagination.next`.
    pub fn rancher_hosts_page(body: &[u8]) -> Result<(Vec<Host>, Option<String>), RancherError> {
        crate::rancher::decode_page(&Method::GET, RANCHER_URL, body)
    }

    /// A collection of registration tokens.
    pub fn rancher_tokens_page(
        body: &[u8],
    ) -> Result<(Vec<RegistrationToken>, Option<String>), RancherError> {
        crate::rancher::decode_page(&Method::GET, RANCHER_URL, body)
    }

    /// One host (`GET .../hosts/{id}`, or the answer to a host action).
    pub fn rancher_host(body: &[u8]) -> Result<Host, RancherError> {
        crate::rancher::decode(&Method::POST, RANCHER_URL, body)
    }

    /// One registration token (`GET` one, or the answer to creating one).
    pub fn rancher_token(body: &[u8]) -> Result<RegistrationToken, RancherError> {
        crate::rancher::decode(&Method::POST, RANCHER_URL, body)
    }

    /// The project a key works in.
    pub fn rancher_project(body: &[u8]) -> Result<Project, RancherError> {
        crate::rancher::decode(&Method::GET, RANCHER_URL, body)
    }

    /// The error for a non-2xx answer; `None` for a number that is no HTTP status.
    pub fn rancher_error(status: u16, body: &[u8]) -> Option<RancherError> {
        let status = StatusCode::from_u16(status).ok()?;
        Some(crate::rancher::api_error(
            &Method::GET,
            RANCHER_URL,
            status,
            body,
        ))
    }

    /// Where a `pagination.next` link leads from [`RANCHER_BASE`]; `None` on the last page.
    pub fn rancher_next_page(link: Option<String>) -> Result<Option<Url>, RancherError> {
        let base = Url::parse(RANCHER_BASE).map_err(|e| RancherError::Protocol(e.to_string()))?;
        crate::rancher::next_page(&base, link)
    }

    /// The host that `find_host_by_instance` picks among `hosts`.
    pub fn rancher_pick_host(hosts: Vec<Host>, instance_id: &str) -> Option<Host> {
        crate::rancher::pick_host(hosts, instance_id)
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

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::config::{Config, Sources, DEFAULT_CONFIG_PATH};

/// Exit code for bad usage or bad config.
pub const EXIT_USAGE: u8 = 2;

/// The whole program: parse, load config, run the subcommand, map the result to an exit code.
pub fn main_entry() -> ExitCode {
    let cli = Cli::parse();
    let path_explicit = cli.config.is_some();
    let sources = Sources {
        path: cli
            .config
            .clone()
            .unwrap_or_else(|| DEFAULT_CONFIG_PATH.into()),
        path_explicit,
        env: std::env::vars().collect(),
        overrides: &cli.set,
    };
    let config = match Config::load(sources) {
        Ok(c) => c,
        Err(e) => {
            if cli.command == Command::Check {
                println!("{:<5} {:<12} {}", "FAIL", "config", e);
            }
            eprintln!("drover: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    logging::init(&config.log);
    for warning in &config.warnings {
        tracing::warn!("{warning}");
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
            Command::Register => app::register_command(&config).await,
            Command::Deregister { if_going_away } => {
                app::deregister_command(config.clone(), if_going_away).await
            }
            Command::Run => app::run_command(config.clone()).await,
            Command::Check => app::check_command(&config).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("drover: {e}");
            ExitCode::FAILURE
        }
    }
}
