//! Reaction time: from a lifecycle message sent (or the IMDS target lifecycle state turning
//! `Terminated`) to `CompleteLifecycleAction` arriving at the Auto Scaling stand-in, with
//! Rancher's transitions at zero delay, so that the figure is drover's own overhead.

use std::time::Duration;

use super::{
    lifecycle_message, median_p95, ms, start_watching, wait_for_completion, zero_delay_rancher,
    Row, Settings,
};
use crate::docker::DockerEngine;
use crate::moto::MotoServer;

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
    let queue = if source == "sqs" {
        Some(moto.create_queue(&format!("react-{n}"), None).await)
    } else {
        None
    };
    let mut w = start_watching(
        settings,
        n,
        zero_delay_rancher(),
        queue.as_deref(),
        docker,
        moto,
    )
    .await?;
    let id = w.node.instance_id.clone();
    // Into the steady state: the first long poll is waiting, the first IMDS poll is done.
    // For IMDS, the state turns at a random point of the poll cycle, as it does on a host.
    let phase = if source == "imds" {
        Duration::from_millis(rand::random_range(0..IMDS_POLL.as_millis() as u64))
    } else {
        Duration::ZERO
    };
    tokio::time::sleep(Duration::from_millis(500) + phase).await;

    let token = w
        .asg
        .begin_termination(&id, Duration::ZERO)
        .ok_or("the group has no termination hook")?;
    let sent = tokio::time::Instant::now();
    match &queue {
        Some(q) => moto.send(q, &lifecycle_message(&id, &token)).await,
        None => w.imds.set_target_lifecycle_state(Some("Terminated")),
    }
    let waited = wait_for_completion(&w.asg, &id, Duration::from_secs(60)).await;
    let took = sent.elapsed();
    w.stop().await;
    waited.map_err(|e| format!("{e}; log:\n{}", super::tail(&w.drover.stderr(), 20)))?;
    if std::env::var_os("DROVER_BENCH_VERBOSE").is_some() {
        eprintln!("--- {source} run {n}: {took:?}\n{}", w.drover.stderr());
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
