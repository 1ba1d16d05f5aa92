//! Evacuation end to end (`lifecycle.evacuate = true`): the built binary against the Rancher
//! stand-in, whose evacuations take their time as Cattle's do (the host inactive before its
//! containers are gone), and which records any host removed with containers still on it.

use std::time::Duration;

use testbed::bed::{eventually, Bed, BedOptions, ROUTING_KEY};
use testbed::config::{OnFailure, Secret};
use testbed::rancher::{ContainerSpec, RancherOptions};

const LONG: Duration = Duration::from_secs(60);

/// A bed whose Rancher takes `container_delay` to stop a container and again to remove it.
async fn bed_with(container_delay: Duration, v2beta: bool) -> Bed {
    let mut bed = Bed::with(BedOptions {
        rancher: RancherOptions {
            container_delay,
            v2beta,
            ..BedOptions::default().rancher
        },
        ..BedOptions::default()
    })
    .await;
    bed.config.lifecycle.evacuate = Some(true);
    // Terminations come from IMDS here (or from `deregister`), nothing else.
    bed.config.lifecycle.imds_poll = Some(Duration::from_millis(300));
    bed
}

/// Two containers of the user's and one of Rancher's on `host`.
fn put_containers(bed: &Bed, host: &str) {
    for (name, system) in [("web-1", false), ("healthcheck", true), ("web-2", false)] {
        bed.rancher.add_container(
            host,
            ContainerSpec {
                name: name.into(),
                system,
            },
        );
    }
}

/// The non-system containers of `host` still there.
fn still_there(bed: &Bed, host: &str) -> Vec<String> {
    bed.rancher
        .containers(host)
        .into_iter()
        .filter(|c| !c.system && c.state != "removed")
        .map(|c| c.name)
        .collect()
}

fn completions(bed: &Bed) -> Vec<testbed::autoscaling::Completion> {
    bed.asg
        .completions()
        .into_iter()
        .filter(|c| c.instance_id == bed.instance_id)
        .collect()
}

fn timeline(bed: &Bed) -> Vec<String> {
    let path = bed
        .state_dir()
        .join(format!("takeout-{}.json", bed.instance_id));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("take-out record")).expect("json");
    record["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .map(|entry| entry.to_string())
        .collect()
}

/// Requests for Rancher's own evacuate action, which drover never sends: it creates the
/// event itself, to know when the evacuation is done.
fn evacuate_actions(bed: &Bed) -> usize {
    bed.rancher
        .requests()
        .iter()
        .filter(|r| r.query.contains("action=evacuate"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_is_removed_only_once_its_containers_are_gone() {
    let bed = bed_with(Duration::from_millis(700), true).await;
    let host_id = bed.register().await;
    put_containers(&bed, &host_id);
    let mut run = bed.spawn(&["run"]);
    run.wait_ready(LONG).await.expect("drover run ready");
    bed.asg.begin_termination(&bed.instance_id, Duration::ZERO);
    bed.imds.set_target_lifecycle_state(Some("Terminated"));
    let done = eventually("hook completed", LONG, || {
        completions(&bed).into_iter().next()
    })
    .await;
    assert_eq!(done.result, "CONTINUE");

    let removed_early = bed.rancher.removed_with_containers();
    assert!(removed_early.is_empty(), "{removed_early:?}");
    assert!(still_there(&bed, &host_id).is_empty());
    let host = bed.rancher.host(&host_id).expect("host");
    assert_eq!(host.state, "purged", "{:?}", host.history);
    // Rancher deactivated it (the evacuation's first move); drover's deactivate found it
    // done and went on to remove it.
    assert_eq!(
        host.history,
        [
            "registering",
            "active",
            "deactivating",
            "inactive",
            "removing",
            "removed",
            "purging",
            "purged"
        ]
    );
    let events = bed.rancher.host_events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].state.as_str(), events[0].by_action),
        ("created", false)
    );
    assert_eq!(evacuate_actions(&bed), 0);
    let timeline = timeline(&bed);
    assert!(
        timeline.iter().any(|e| e.contains("evacuation finished")),
        "{timeline:#?}"
    );
    assert_eq!(
        run.stop(LONG).await.expect("drover run stops"),
        Some(0),
        "{}",
        run.output()
    );
    assert_eq!(completions(&bed).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evacuation_longer_than_drain_timeout_pages_and_answers_on_failure() {
    let mut bed = bed_with(Duration::from_secs(60), true).await;
    bed.config.lifecycle.drain_timeout = Some(Duration::from_secs(4));
    bed.config.lifecycle.on_failure = Some(OnFailure::Abandon);
    bed.config.pager.routing_key = Some(Secret::Inline(ROUTING_KEY.into()));
    let host_id = bed.register().await;
    put_containers(&bed, &host_id);
    bed.asg.begin_termination(&bed.instance_id, Duration::ZERO);
    let run = bed.drover(&["deregister"]).await;
    run.assert_code(1);

    let pages = bed.pager.events();
    assert_eq!(pages.len(), 1, "{pages:?}");
    assert_eq!(pages[0]["event_action"], "trigger");
    let summary = pages[0]["payload"]["summary"].as_str().expect("summary");
    assert!(summary.contains("evacuate"), "{summary}");
    let done = completions(&bed);
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].result, "ABANDON");
    // The host stays, its containers on it, never removed under them.
    let host = bed.rancher.host(&host_id).expect("host");
    assert_eq!(host.state, "inactive", "{:?}", host.history);
    assert_eq!(still_there(&bed, &host_id).len(), 2);
    assert!(bed.rancher.removed_with_containers().is_empty());
    assert!(
        run.stderr.contains("non-system containers still on it"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_take_out_killed_while_evacuating_follows_the_same_evacuation_after_a_restart() {
    let bed = bed_with(Duration::from_millis(1500), true).await;
    let host_id = bed.register().await;
    put_containers(&bed, &host_id);
    let mut first = bed.spawn(&["run"]);
    first.wait_ready(LONG).await.expect("drover run ready");
    bed.asg.begin_termination(&bed.instance_id, Duration::ZERO);
    bed.imds.set_target_lifecycle_state(Some("Terminated"));
    eventually("the evacuation begun", LONG, || {
        bed.rancher.host_events().into_iter().next()
    })
    .await;
    first.kill().await;
    assert!(
        !still_there(&bed, &host_id).is_empty(),
        "killed before the evacuation finished"
    );

    let mut second = bed.spawn(&["run"]);
    second
        .wait_for_output("resuming an unfinished take-out", LONG)
        .await
        .expect("the take-out resumed");
    let done = eventually("hook completed", LONG, || {
        completions(&bed).into_iter().next()
    })
    .await;
    assert_eq!(done.result, "CONTINUE");
    assert_eq!(bed.rancher.host(&host_id).expect("host").state, "purged");
    assert_eq!(
        bed.rancher.host_events().len(),
        1,
        "one evacuation, followed"
    );
    assert!(bed.rancher.removed_with_containers().is_empty());
    assert!(
        second.output().contains("already creating"),
        "{}",
        second.output()
    );
    assert_eq!(second.stop(LONG).await.expect("stops"), Some(0));
    assert_eq!(completions(&bed).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_evacuate_off_the_host_goes_as_before_with_its_containers() {
    let mut bed = bed_with(Duration::from_millis(300), true).await;
    bed.config.lifecycle.evacuate = Some(false);
    let host_id = bed.register().await;
    put_containers(&bed, &host_id);
    bed.asg.begin_termination(&bed.instance_id, Duration::ZERO);
    let run = bed.drover(&["deregister"]).await;
    run.assert_code(0);
    assert_eq!(completions(&bed)[0].result, "CONTINUE");
    let host = bed.rancher.host(&host_id).expect("host");
    assert_eq!(host.state, "purged");
    assert!(bed.rancher.host_events().is_empty());
    assert_eq!(evacuate_actions(&bed), 0);
    // Nothing waited for the containers: the stand-in saw the host removed with them.
    let removed: Vec<(String, String, Vec<String>)> = bed
        .rancher
        .removed_with_containers()
        .into_iter()
        .map(|r| (r.host_id, r.action, r.containers))
        .collect();
    let with_them = vec!["web-1".to_string(), "web-2".to_string()];
    assert_eq!(
        removed,
        [
            (host_id.clone(), "remove".to_string(), with_them.clone()),
            (host_id.clone(), "purge".to_string(), with_them)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_v1_the_host_is_taken_out_without_evacuation_and_the_timeline_says_so() {
    let bed = bed_with(Duration::from_millis(300), false).await;
    let host_id = bed.register().await;
    put_containers(&bed, &host_id);
    let run = bed.drover(&["deregister"]).await;
    run.assert_code(0);
    assert_eq!(bed.rancher.host(&host_id).expect("host").state, "purged");
    assert!(bed.rancher.host_events().is_empty());
    let timeline = timeline(&bed);
    assert!(
        timeline
            .iter()
            .any(|e| e.contains("not evacuated: Rancher's /v1 API has no evacuation")),
        "{timeline:#?}"
    );
}
