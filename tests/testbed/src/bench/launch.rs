//! The way in: from the host turning active in Rancher to drover's
//! `CompleteLifecycleAction` (`CONTINUE`) for the launching hook, over `drover register`
//! runs against a Rancher stand-in that takes a second to register the host. The moment
//! the host turns active is the stand-in's own (when the registration landed), so the
//! figure includes how late drover's polling notices it.

use std::time::Duration;

use super::{endpoints, instance, median_p95, ms, Node, Row, Settings};
use crate::autoscaling::{AutoScalingServer, LAUNCHING};
use crate::bed::{add_group, add_launch_hook, GROUP, HOOK_TIMEOUT};
use crate::docker::DockerEngine;
use crate::imds::ImdsServer;
use crate::rancher::{RancherOptions, RancherServer};

pub async fn run(settings: &Settings, docker: &DockerEngine) -> Result<Vec<Row>, String> {
    let runs = settings.runs.clamp(1, 20);
    let mut lags = Vec::new();
    for n in 0..runs {
        for c in docker.containers().await {
            if let Ok(client) = docker.client().await {
                let _ = client
                    .remove_container(
                        &c.id,
                        Some(bollard::query_parameters::RemoveContainerOptions {
                            force: true,
                            ..Default::default()
                        }),
                    )
                    .await;
            }
        }
        let opts = instance(300 + n);
        let imds = ImdsServer::start(opts.clone()).await;
        let rancher = RancherServer::start(RancherOptions {
            token_create_delay: Duration::ZERO,
            // Long enough that drover is polling when the host lands, as on a real server.
            register_delay: Duration::from_millis(1000 + 37 * n as u64),
            transition_delay: Duration::ZERO,
            ..RancherOptions::default()
        })
        .await;
        rancher.add_registration_token(true);
        rancher.watch(docker);
        let asg = AutoScalingServer::start().await;
        add_group(&asg, HOOK_TIMEOUT);
        add_launch_hook(&asg, Duration::from_secs(300));
        asg.launch_instance(
            GROUP,
            &opts.instance_id,
            "m5.large",
            "us-east-1b",
            Duration::ZERO,
        );
        let node = Node::new(&opts.instance_id).map_err(|e| e.to_string())?;
        node.write_config(&rancher, None, Duration::ZERO, "info")
            .map_err(|e| e.to_string())?;
        let run = node
            .launcher(
                &settings.drover,
                &endpoints(&imds, &asg, None, docker),
                &["register"],
            )
            .run(Duration::from_secs(300))
            .await?;
        if run.code != Some(0) {
            return Err(format!(
                "drover register failed ({:?}):\n{}",
                run.code,
                super::tail(&run.stderr, 20)
            ));
        }
        let host = rancher
            .hosts()
            .into_iter()
            .find(|h| h.labels.get("aws.instance_id") == Some(&opts.instance_id))
            .ok_or("no host registered")?;
        let active = rancher
            .active_at(&host.id)
            .ok_or("the host never turned active")?;
        let completion = asg
            .completions()
            .into_iter()
            .find(|c| c.transition == LAUNCHING && c.result == "CONTINUE")
            .ok_or("no CONTINUE for the launching hook")?;
        let completed = asg.started_at() + completion.at;
        lags.push(completed.saturating_duration_since(active));
    }
    let (median, p95) = median_p95(&lags);
    println!("launch: active → CONTINUE median {}", ms(median));
    Ok(vec![Row::new(
        "launch",
        format!("host active → launching CONTINUE ({runs} runs)"),
        format!("median {}, p95 {}", ms(median), ms(p95)),
    )
    .target(
        "median <= 50 ms",
        median <= Duration::from_millis(50),
    )])
}
