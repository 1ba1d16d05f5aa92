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
