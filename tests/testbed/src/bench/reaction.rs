//! Reaction time: from a lifecycle message sent (or the IMDS target lifecycle state turning
//! `Terminated`) to `CompleteLifecycleAction` arriving at the Auto Scaling stand-in, with
//! Rancher's transitions at zero delay, so that the figure is drover's own overhead.

use std::time::Duration;

use super::{
    add_active_host, add_group, drover_command, instance, lifecycle_message, median_p95, ms,
    wait_for_completion, wait_for_log, Endpoints, Node, Row, Settings,
};
use crate::autoscaling::AutoScalingServer;
use crate::docker::DockerEngine;
use crate::imds::ImdsServer;
use crate::moto::MotoServer;
use crate::rancher::{RancherOptions, RancherServer};

/// drover's IMDS poll interval in these runs (the default).
const IMDS_POLL: Duration = Duration::from_secs(5);

/// One termination, timed: `source` is "sqs" or "imds".
async fn once(
    settings: &Settings,
    source: &str,
    n: usize,
    docker: &DockerEngine,
    moto: &MotoServer,
) -> Result<Duration, String> {
    let opts = instance(n);
    let id = opts.instance_id.clone();
    let imds = ImdsServer::start(opts.clone()).await;
    let rancher = RancherServer::start(RancherOptions {
        transition_delay: Duration::ZERO,
        ..RancherOptions::default()
    })
    .await;
    let asg = AutoScalingServer::start().await;
    add_group(&asg);
    asg.add_instance(super::GROUP, &id, "m5.large", "us-east-1b");
    add_active_host(&rancher, &opts);
    let node = Node::new(&id).map_err(|e| e.to_string())?;
    let queue = if source == "sqs" {
        Some(moto.create_queue(&format!("react-{n}"), None).await)
    } else {
        None
    };
    let poll = if source == "sqs" { "0s" } else { "5s" };
    node.write_config(&rancher, queue.as_deref(), poll, "info")
        .map_err(|e| e.to_string())?;
    let ends = Endpoints {
        imds: &imds,
        asg: &asg,
        sqs: Some(moto.url()),
        docker_host: docker.docker_host(),
    };
    let mut child = drover_command(&settings.drover, &node, &ends, &["run"])
        .map_err(|e| e.to_string())?
        .spawn()
        .map_err(|e| e.to_string())?;
    wait_for_log(&node, "watching for termination", Duration::from_secs(60)).await?;
    // Into the steady state: the first long poll is waiting, the first IMDS poll is done.
    // For IMDS, the state turns at a random point of the poll cycle, as it does on a host.
    let phase = if source == "imds" {
        Duration::from_millis(rand::random_range(0..IMDS_POLL.as_millis() as u64))
    } else {
        Duration::ZERO
    };
    tokio::time::sleep(Duration::from_millis(500) + phase).await;

    let token = asg
        .begin_termination(&id, Duration::ZERO)
        .ok_or("the group has no termination hook")?;
    let sent = tokio::time::Instant::now();
    match &queue {
        Some(q) => moto.send(q, &lifecycle_message(&id, &token)).await,
        None => imds.set_target_lifecycle_state(Some("Terminated")),
    }
    let waited = wait_for_completion(&asg, &id, Duration::from_secs(60)).await;
    let took = sent.elapsed();
    let _ = child.start_kill();
    let _ = child.wait().await;
    waited.map_err(|e| format!("{e}; log:\n{}", super::tail(&super::log_of(&node), 20)))?;
    if std::env::var_os("DROVER_BENCH_VERBOSE").is_some() {
        eprintln!("--- {source} run {n}: {took:?}\n{}", super::log_of(&node));
    }
    Ok(took)
}

pub async fn run(
    settings: &Settings,
    docker: &DockerEngine,
    moto: &MotoServer,
) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for source in ["sqs", "imds"] {
        let mut sample = Vec::new();
        for n in 0..settings.runs {
            sample.push(once(settings, source, 100 + n, docker, moto).await?);
        }
        let (median, p95) = median_p95(&sample);
        println!(
            "reaction {source}: {} runs, median {}, p95 {}",
            sample.len(),
            ms(median),
            ms(p95)
        );
        let (what, target, met) = match source {
            "sqs" => (
                "SQS message → CompleteLifecycleAction",
                "median <= 50 ms".to_string(),
                median <= Duration::from_millis(50),
            ),
            _ => (
                "IMDS Terminated → CompleteLifecycleAction",
                format!("p95 <= poll ({}s) + 50 ms", IMDS_POLL.as_secs()),
                p95 <= IMDS_POLL + Duration::from_millis(50),
            ),
        };
        rows.push(
            Row::new(
                "reaction",
                format!("{what} ({} runs)", sample.len()),
                format!("median {}, p95 {}", ms(median), ms(p95)),
            )
            .target(target, met),
        );
    }
    Ok(rows)
}
