//! The fault-injection suite: a fixed list of seeds, each a repeatable case of a
//! termination source with faults across the stand-ins (Rancher, IMDS, Auto Scaling, SQS,
//! PagerDuty, the Docker engine) and drover itself killed and restarted, run against the
//! built binary; every invariant drover promises is checked after every case (see
//! `testbed::faults`). `drover-testbed faults --seeds 0..2000` runs many more.
//!
//! The boot cases (`testbed::faults_boot`, seeds of their own): a launching instance
//! registering while faults, a stop, a termination or a kill meet the registration; then
//! the promises of the way in are checked. `drover-testbed faults --boot` runs more.
//!
//! The reaper cases (`testbed::faults_reap`, seeds of their own): three `drover run` peers
//! sweeping one environment every 4 s among dead hosts and hosts to leave alone, while
//! Rancher and Auto Scaling fail, a peer is killed, a second reaper or a dead host's own late
//! drover races them. `drover-testbed faults --reap` runs more.

use std::sync::Arc;

use testbed::faults::{markdown, Campaign, Outcome};
use testbed::faults_boot::BootCampaign;
use testbed::faults_reap::ReapCampaign;

/// At least 200 cases, run a few at a time: each is mostly waiting.
const SEEDS: std::ops::Range<u64> = 0..200;
const JOBS: usize = 8;
/// Boot cases: each is a few seconds of registration and mostly waiting.
const BOOT_SEEDS: std::ops::Range<u64> = 0..40;
/// Reaper cases: each a fleet of three drovers watched for a few intervals; fewer at a time,
/// so that a busy machine does not stretch a take-out past the one interval the bound leaves it.
const REAP_SEEDS: std::ops::Range<u64> = 0..40;
const REAP_JOBS: usize = 4;

/// The campaign's binary, moto and Docker engine.
async fn campaign() -> Arc<Campaign> {
    Arc::new(
        Campaign::start(std::path::Path::new(env!("CARGO_BIN_EXE_drover")))
            .await
            .expect("moto and dockerd start"),
    )
}

/// Fails the test when any case broke an invariant: each such case with its seed, its
/// violations and drover's last log lines, then one line of their seeds.
fn assert_no_violations<R: Outcome>(what: &str, reports: &[R]) {
    let failing: Vec<&R> = reports
        .iter()
        .filter(|r| !r.violations().is_empty())
        .collect();
    for r in &failing {
        eprintln!(
            "--- {what} seed {} ({}) took {:?}:\n  {}\n{}",
            r.seed(),
            r.label(),
            r.took(),
            r.violations().join("\n  "),
            r.log_tail()
        );
    }
    assert!(
        failing.is_empty(),
        "{} of {} {what} cases broke an invariant (seeds {:?})",
        failing.len(),
        reports.len(),
        failing.iter().map(|r| r.seed()).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_termination_lost_no_wrong_host_no_leak_under_faults() {
    let campaign = campaign().await;
    let seeds: Vec<u64> = SEEDS.collect();
    let reports = campaign.run(&seeds, JOBS).await;
    assert_eq!(reports.len(), seeds.len(), "every case ran");
    println!("{}", markdown(&reports, &format!("{SEEDS:?}")));
    assert_no_violations("termination", &reports);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn boot_cases_answer_the_launch_once_page_a_failed_boot_and_leave_nothing_after_a_stop() {
    let boot = Arc::new(BootCampaign::new(campaign().await));
    let seeds: Vec<u64> = BOOT_SEEDS.collect();
    let reports = boot.run(&seeds, JOBS).await;
    assert_eq!(reports.len(), seeds.len(), "every boot case ran");
    println!(
        "{}",
        testbed::faults_boot::markdown(&reports, &format!("{BOOT_SEEDS:?}"))
    );
    assert_no_violations("boot", &reports);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reaper_cases_leave_live_hosts_alone_and_take_every_dead_one_out_within_the_bound() {
    let reap = Arc::new(ReapCampaign::new(campaign().await));
    let seeds: Vec<u64> = REAP_SEEDS.collect();
    let started = std::time::Instant::now();
    let reports = reap.run(&seeds, REAP_JOBS).await;
    assert_eq!(reports.len(), seeds.len(), "every reaper case ran");
    println!(
        "{}\n(took {:.0} s)",
        testbed::faults_reap::markdown(&reports, &format!("{REAP_SEEDS:?}")),
        started.elapsed().as_secs_f64()
    );
    assert_no_violations("reaper", &reports);
}
