//! The fault-injection suite: a fixed list of seeds, each a repeatable case of a
//! termination source with faults across the stand-ins (Rancher, IMDS, Auto Scaling, SQS,
//! PagerDuty, the Docker engine) and drover itself killed and restarted, run against the
//! built binary; every invariant drover promises is checked after every case (see
//! `testbed::faults`). `drover-testbed faults --seeds 0..2000` runs many more.

use std::sync::Arc;

use testbed::faults::{markdown, Campaign};

/// At least 200 cases, run a few at a time: each is mostly waiting.
const SEEDS: std::ops::Range<u64> = 0..200;
const JOBS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_termination_lost_no_wrong_host_no_leak_under_faults() {
    let campaign = Arc::new(
        Campaign::start(std::path::Path::new(env!("CARGO_BIN_EXE_drover")))
            .await
            .expect("moto and dockerd start"),
    );
    let seeds: Vec<u64> = SEEDS.collect();
    let reports = campaign.run(&seeds, JOBS).await;
    assert_eq!(reports.len(), seeds.len(), "every case ran");
    println!("{}", markdown(&reports, &format!("{SEEDS:?}")));
    let failing: Vec<_> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .collect();
    for r in &failing {
        eprintln!(
            "--- seed {} ({:?}, faults {:?}, kills {}) took {:?}:\n  {}\n{}",
            r.plan.seed,
            r.plan.trigger,
            r.plan.faults,
            r.plan.kills_len(),
            r.took,
            r.violations.join("\n  "),
            r.log_tail
        );
    }
    assert!(
        failing.is_empty(),
        "{} of {} cases broke an invariant (seeds {:?})",
        failing.len(),
        reports.len(),
        failing.iter().map(|r| r.plan.seed).collect::<Vec<_>>()
    );
}
