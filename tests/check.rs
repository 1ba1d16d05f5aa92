//! `drover check` end to end: one line per dependency, exit 0 only when all pass.

mod common;

use common::{Bed, ROUTING_KEY};
use testbed::moto::MotoServer;

fn mark_of<'a>(stdout: &'a str, name: &str) -> Option<&'a str> {
    stdout.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        let mark = words.next()?;
        (words.next() == Some(name)).then_some(mark)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_passes_against_the_test_bed() {
    let moto = MotoServer::start().await.expect("moto starts");
    let queue = moto.create_queue("drover-lifecycle", Some(5)).await;
    let mut bed = Bed::start().await;
    bed.extra_env
        .push(("AWS_ENDPOINT_URL_SQS".into(), moto.url()));
    bed.extra_env
        .push(("DROVER_LIFECYCLE_QUEUE_URL".into(), queue.clone()));
    bed.extra_env.push((
        "DROVER_PAGER_PAGERDUTY_ROUTING_KEY".into(),
        ROUTING_KEY.into(),
    ));
    bed.extra_env
        .push(("DROVER_LIFECYCLE_HOOK_NAME".into(), common::HOOK.into()));
    let run = bed.drover(&["check"]).await;
    run.assert_code(0);
    for name in common::CHECKS {
        assert_eq!(
            mark_of(&run.stdout, name),
            Some("ok"),
            "{name}:\n{}",
            run.stdout
        );
    }
    assert!(run.stdout.contains(&bed.instance_id), "{}", run.stdout);
    assert!(run.stdout.contains("v2-beta"), "{}", run.stdout);
    assert!(run.stdout.contains("\"drain\""), "{}", run.stdout);
    // check pages nobody and starts nothing.
    assert!(bed.pager.events().is_empty());
    assert!(bed.rancher.bootstraps_seen().is_empty());
    assert_eq!(moto.approximate_counts(&queue).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_and_missing_hook_fail_with_reasons() {
    let mut bed = Bed::start().await;
    bed.extra_env
        .push(("DROVER_RANCHER_ACCESS_KEY".into(), "WRONGKEY".into()));
    bed.extra_env
        .push(("DROVER_LIFECYCLE_HOOK_NAME".into(), "no-such-hook".into()));
    let run = bed.drover(&["check"]).await;
    run.assert_code(1);
    assert_eq!(
        mark_of(&run.stdout, "rancher"),
        Some("FAIL"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("401"), "{}", run.stdout);
    assert_eq!(
        mark_of(&run.stdout, "autoscaling"),
        Some("FAIL"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("no-such-hook"), "{}", run.stdout);
    assert_eq!(mark_of(&run.stdout, "docker"), Some("ok"), "{}", run.stdout);
    assert_eq!(mark_of(&run.stdout, "sqs"), Some("skip"), "{}", run.stdout);
}
