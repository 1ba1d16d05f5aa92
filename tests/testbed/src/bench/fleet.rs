//! Fleet simulation: N `drover run` processes, each with its own instance identity, in one
//! Rancher environment, sharing one SQS queue with a redrive policy of 5 receives; half of
//! them terminated at once, as a scale-in does.

use std::time::Duration;

use super::{endpoints, instance, lifecycle_message, ms, zero_delay_rancher, Node, Row, Settings};
use crate::autoscaling::AutoScalingServer;
use crate::bed::{add_active_host, add_group, GROUP, HOOK_TIMEOUT};
use crate::docker::DockerEngine;
use crate::imds::ImdsServer;
use crate::launch::Running;
use crate::moto::MotoServer;
use crate::rancher::RancherServer;

/// How many receives each message took, from the deleting drover's log line (a
/// measurement drover reports only there).
fn receive_counts(drovers: &[Running]) -> Vec<u64> {
    let mut counts = Vec::new();
    for drover in drovers {
        for line in drover.stderr().lines() {
            if !line.contains("deleted the lifecycle message") {
                continue;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let count = v
                .pointer("/fields/receive_count")
                .or_else(|| v.get("receive_count"))
                .and_then(serde_json::Value::as_u64);
            if let Some(c) = count {
                counts.push(c);
            }
        }
    }
    counts
}

pub async fn run(
    settings: &Settings,
    docker: &DockerEngine,
    moto: &MotoServer,
) -> Result<Vec<Row>, String> {
    let n = settings.fleet.max(2);
    let rancher = RancherServer::start(zero_delay_rancher()).await;
    let asg = AutoScalingServer::start().await;
    add_group(&asg, HOOK_TIMEOUT);
    let queue = moto
        .create_queue(&format!("fleet-{}", std::process::id()), Some(5))
        .await;
    let dlq = format!("{queue}-dlq");

    let mut imds = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..n {
        let opts = instance(1000 + i);
        asg.add_instance(GROUP, &opts.instance_id, "m5.large", "us-east-1b");
        add_active_host(&rancher, &opts);
        let node = Node::new(&opts.instance_id).map_err(|e| e.to_string())?;
        node.write_config(&rancher, Some(&queue), Duration::from_secs(5), "info")
            .map_err(|e| e.to_string())?;
        imds.push(ImdsServer::start(opts).await);
        nodes.push(node);
    }
    let mut drovers = Vec::new();
    for (node, imds) in nodes.iter().zip(&imds) {
        let ends = endpoints(imds, &asg, Some(moto.url()), docker);
        drovers.push(node.launcher(&settings.drover, &ends, &["run"]).spawn()?);
    }
    for drover in &mut drovers {
        drover.wait_ready(Duration::from_secs(120)).await?;
    }
    println!("fleet: {n} drovers watching one queue");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Scale-in: every other instance, all at once.
    let leaving: Vec<&Node> = nodes.iter().step_by(2).collect();
    let rancher_before = rancher.requests().len();
    let first = tokio::time::Instant::now();
    for node in &leaving {
        let token = asg
            .begin_termination(&node.instance_id, Duration::ZERO)
            .ok_or("no termination hook")?;
        moto.send(&queue, &lifecycle_message(&node.instance_id, &token))
            .await;
    }
    let last_sent = first.elapsed();

    let limit = tokio::time::Instant::now() + Duration::from_secs(180);
    let mut last_completion = None;
    loop {
        let done = asg.completions();
        let all = leaving
            .iter()
            .all(|l| done.iter().any(|c| c.instance_id == l.instance_id));
        if all {
            last_completion = Some(first.elapsed());
            break;
        }
        if tokio::time::Instant::now() > limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    // Let deletions land before counting what is left.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let completions = asg.completions();
    let completed = leaving
        .iter()
        .filter(|l| {
            completions
                .iter()
                .any(|c| c.instance_id == l.instance_id && c.result == "CONTINUE")
        })
        .count();
    let twice = leaving
        .iter()
        .filter(|l| {
            completions
                .iter()
                .filter(|c| c.instance_id == l.instance_id && !c.by_timeout)
                .count()
                > 1
        })
        .count();
    let (dlq_visible, dlq_hidden) = moto.approximate_counts(&dlq).await;
    let dead_lettered = dlq_visible + dlq_hidden;
    let counts = receive_counts(&drovers);
    let receives_per_message = if counts.is_empty() {
        0.0
    } else {
        counts.iter().sum::<u64>() as f64 / counts.len() as f64
    };
    let rancher_requests = rancher.requests().len().saturating_sub(rancher_before);
    let staying_touched = nodes
        .iter()
        .skip(1)
        .step_by(2)
        .filter(|s| {
            rancher.hosts().iter().any(|h| {
                h.labels.get("aws.instance_id") == Some(&s.instance_id) && h.state != "active"
            })
        })
        .count();

    for drover in &mut drovers {
        drover.kill().await;
    }

    let terminated = leaving.len();
    let since_last = last_completion.map(|l| l.saturating_sub(last_sent));
    println!(
        "fleet: {completed}/{terminated} hooks completed, {dead_lettered} dead-lettered, last completion {}",
        last_completion.map(ms).unwrap_or_else(|| "never".into())
    );
    let rows = vec![
        Row::new(
            "fleet",
            "drovers, terminated at once",
            format!("{n}, {terminated}"),
        ),
        Row::new(
            "fleet",
            "hooks completed with CONTINUE",
            format!("{completed}/{terminated} (completed twice: {twice})"),
        )
        .target("all, once", completed == terminated && twice == 0),
        Row::new("fleet", "messages dead-lettered", dead_lettered.to_string())
            .target("0", dead_lettered == 0),
        Row::new(
            "fleet",
            "receives per message",
            format!(
                "{receives_per_message:.2} (over {} deletions)",
                counts.len()
            ),
        ),
        Row::new(
            "fleet",
            "first message → last completion",
            last_completion.map(ms).unwrap_or_else(|| "never".into()),
        ),
        Row::new(
            "fleet",
            "last message sent → last completion",
            since_last.map(ms).unwrap_or_else(|| "never".into()),
        )
        .target(
            "<= 5 s",
            since_last.is_some_and(|d| d <= Duration::from_secs(5)),
        ),
        Row::new(
            "fleet",
            "Rancher API requests per terminated host",
            format!("{:.1}", rancher_requests as f64 / terminated as f64),
        ),
        Row::new(
            "fleet",
            "hosts of staying instances touched",
            staying_touched.to_string(),
        )
        .target("0", staying_touched == 0),
    ];
    Ok(rows)
}
