//! Fleet simulation with the reaper on: N `drover run` processes in one Rancher environment,
//! each with its own instance identity, every one sweeping every `reaper.interval` as the
//! fleet paces it (no queue, IMDS polling off: the reaper is all that runs). Measured:
//!
//! - host listings per interval from the whole fleet, counted at the Rancher stand-in (a
//!   listing is a `GET .../hosts` without `marker=`: one per sweep, the pages after it not
//!   counted), over a window after a warm-up: a fresh fleet's first waits are drawn from
//!   what each drover's registration listed (the k-th drover to be ready sees about k
//!   hosts), and the waits drawn after them take about two mean waits, `(N + 1) × interval`,
//!   to settle. The listings of the first two intervals are shown apart (a drover that
//!   assumed a fleet of two swept in them all at once);
//! - the time from an instance vanishing (its agent `disconnected` and Auto Scaling no
//!   longer knowing it, at once) to its host `purged`, for instances that die one after
//!   another at a random moment of the sweeps' cycle, while the listings are counted. Each
//!   is a host of its own with no drover (one extra labelled host at a time), so that the
//!   fleet stays N drovers throughout. Rancher's transitions take no time: the figure is the
//!   wait for a sweep and drover's own take-out.

use std::time::Duration;

use super::{endpoints, instance, zero_delay_rancher, Node, Row, Settings};
use crate::autoscaling::AutoScalingServer;
use crate::bed::{add_active_host, add_group, GROUP, HOOK_TIMEOUT};
use crate::docker::DockerEngine;
use crate::imds::ImdsServer;
use crate::rancher::RancherServer;

/// How long a vanished instance's host may take to be purged before the sample is "never".
const PURGE_LIMIT_INTERVALS: u32 = 12;

/// Every fleet size asked for, one after the other.
pub async fn run(settings: &Settings, docker: &DockerEngine) -> Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for &n in &settings.reaper_fleets {
        rows.extend(one_fleet(settings, docker, n.max(2)).await?);
    }
    Ok(rows)
}

/// Listings of the environment (`GET .../hosts`, first pages only) that reached `rancher`
/// between `from` and `to`.
fn listings(
    rancher: &RancherServer,
    from: tokio::time::Instant,
    to: tokio::time::Instant,
) -> usize {
    let zero = tokio::time::Instant::from_std(rancher.faults().started());
    rancher
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/hosts") && !r.query.contains("marker="))
        .filter(|r| {
            let at = zero + r.at;
            at >= from && at < to
        })
        .count()
}

async fn one_fleet(
    settings: &Settings,
    docker: &DockerEngine,
    n: usize,
) -> Result<Vec<Row>, String> {
    let interval = settings.reaper_interval;
    let rancher = RancherServer::start(zero_delay_rancher()).await;
    let asg = AutoScalingServer::start().await;
    add_group(&asg, HOOK_TIMEOUT);

    let mut imds = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..n {
        let opts = instance(3000 + i);
        asg.add_instance(GROUP, &opts.instance_id, "m5.large", "us-east-1b");
        add_active_host(&rancher, &opts);
        let node = Node::new(&opts.instance_id).map_err(|e| e.to_string())?;
        node.write_config_with(&rancher, None, Duration::ZERO, "info", |c| {
            c.reaper.enabled = Some(true);
            c.reaper.interval = Some(interval);
        })
        .map_err(|e| e.to_string())?;
        imds.push(ImdsServer::start(opts).await);
        nodes.push(node);
    }
    let mut drovers = Vec::new();
    for (node, imds) in nodes.iter().zip(&imds) {
        let ends = endpoints(imds, &asg, None, docker);
        drovers.push(node.launcher(&settings.drover, &ends, &["run"]).spawn()?);
    }
    for drover in &mut drovers {
        drover.wait_ready(Duration::from_secs(180)).await?;
    }
    let ready = tokio::time::Instant::now();
    println!(
        "reaper fleet: {n} drovers sweeping every {}s",
        interval.as_secs_f64()
    );

    // The windows: the cold start's burst, the warm-up, then the counted window.
    let burst_end = ready + interval * 2;
    let window_start = ready + interval * (n as u32 + 1).max(3);
    let window_end = window_start + interval * settings.reaper_window;

    // Instances die one after another until the window ends, each at a random moment.
    let mut samples: Vec<Duration> = Vec::new();
    let mut never = 0usize;
    let mut k = 0usize;
    while tokio::time::Instant::now() < window_end {
        let opts = instance(8000 + k);
        k += 1;
        asg.add_instance(GROUP, &opts.instance_id, "m5.large", "us-east-1b");
        let host = add_active_host(&rancher, &opts);
        let phase = rand::random_range(0.2..1.2);
        tokio::time::sleep(interval.mul_f64(phase)).await;
        rancher.lose_agent(&host, Duration::ZERO, Duration::ZERO);
        asg.vanish(&opts.instance_id);
        let died = tokio::time::Instant::now();
        let limit = died + interval * PURGE_LIMIT_INTERVALS;
        loop {
            if rancher.host(&host).is_some_and(|h| h.state == "purged") {
                samples.push(died.elapsed());
                break;
            }
            if tokio::time::Instant::now() > limit {
                never += 1;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let now = tokio::time::Instant::now();
    let burst = listings(&rancher, ready, burst_end);
    let counted = listings(&rancher, window_start, window_end.min(now));
    let window = window_end.min(now).saturating_duration_since(window_start);
    let per_interval = counted as f64 / (window.as_secs_f64() / interval.as_secs_f64());
    // Each drover waits on average (L + 1) / 2 intervals for the L connected labelled hosts
    // it last listed: the fleet's N, and the next instance to vanish while it still lives
    // (0.2 to 1.2 intervals of each cycle of about 1.6): between 2N / (N + 2) and
    // 2N / (N + 1), nearer the first.
    let expected = 2.0 * n as f64 / (n as f64 + 2.0);
    let expected_high = 2.0 * n as f64 / (n as f64 + 1.0);

    // Anything wrong on the way would make the figures meaningless: say so.
    let staying_touched = rancher
        .hosts()
        .iter()
        .filter(|h| {
            nodes
                .iter()
                .any(|node| h.labels.get("aws.instance_id") == Some(&node.instance_id))
        })
        .filter(|h| h.history != ["active"])
        .count();
    for drover in &mut drovers {
        drover.kill().await;
    }

    samples.sort();
    let secs = |d: Duration| d.as_secs_f64();
    let times = |d: Duration| d.as_secs_f64() / interval.as_secs_f64();
    let (median, p95, max) = if samples.is_empty() {
        (None, None, None)
    } else {
        let rank = |p: f64| {
            let r = (p * samples.len() as f64).ceil() as usize;
            samples[r.clamp(1, samples.len()) - 1]
        };
        (Some(rank(0.5)), Some(rank(0.95)), samples.last().copied())
    };
    println!(
        "reaper fleet {n}: {counted} listings in {:.0}s ({per_interval:.2} an interval), {} vanished instances purged, median {}",
        window.as_secs_f64(),
        samples.len(),
        median.map(|m| format!("{:.2}s", secs(m))).unwrap_or_else(|| "never".into())
    );
    let section = "reaper";
    let mut rows = vec![
        Row::new(
            section,
            format!("fleet of {n}: drovers, reaper.interval"),
            format!("{n}, {}s", interval.as_secs_f64()),
        ),
        Row::new(
            section,
            format!("fleet of {n}: host listings in the first two intervals (all fresh)"),
            burst.to_string(),
        ),
        Row::new(
            section,
            format!("fleet of {n}: host listings per interval, whole fleet"),
            format!(
                "{per_interval:.2} ({counted} in {:.0} intervals after {} of warm-up; 2N/(N+2) to 2N/(N+1) = {expected:.2} to {expected_high:.2})",
                window.as_secs_f64() / interval.as_secs_f64(),
                (window_start - ready).as_secs_f64() / interval.as_secs_f64()
            ),
        )
        .target("<= 2", per_interval <= 2.0),
        Row::new(
            section,
            format!("fleet of {n}: instance vanished → host purged ({} instances, {never} never)", samples.len() + never),
            match (median, p95, max) {
                (Some(m), Some(p), Some(x)) => format!(
                    "median {:.2}s ({:.2} × interval), p95 {:.2}s ({:.2} ×), max {:.2}s ({:.2} ×)",
                    secs(m),
                    times(m),
                    secs(p),
                    times(p),
                    secs(x),
                    times(x)
                ),
                _ => "never".into(),
            },
        )
        .target(
            "median <= 2 × interval",
            never == 0 && median.is_some_and(|m| m <= interval * 2),
        ),
    ];
    rows.push(
        Row::new(
            section,
            format!("fleet of {n}: hosts of live drovers touched"),
            staying_touched.to_string(),
        )
        .target("0", staying_touched == 0),
    );
    Ok(rows)
}
