//! The reaper end to end: `drover reap` (and one `drover run` whose own sweep reaps) against
//! the Rancher stand-in under `/v1` and `/v2-beta` and the Auto Scaling stand-in, with every
//! kind of disconnected host, an Auto Scaling that is blind, failing or throttling, two
//! drovers at once, a sweep past its cap, dry runs and a warm pool.

use std::collections::BTreeMap;
use std::time::Duration;

use testbed::autoscaling::{Completion, HookSpec, TERMINATING};
use testbed::bed::{
    add_active_host, direct_message, eventually, Bed, BedOptions, DockerMode, Fate, GROUP, HOOK,
    HOOK_TIMEOUT, ROUTING_KEY,
};
use testbed::config::Secret;
use testbed::http::{Fault, Match};
use testbed::launch::Run;
use testbed::rancher::{HostSnapshot, HostSpec};

const LONG: Duration = Duration::from_secs(60);
const API_VERSIONS: [&str; 2] = ["v1", "v2-beta"];

/// A bed for `drover reap`: no Docker engine (a sweep never touches the local agent of a
/// host it reaps), Rancher at `api`, IMDS polling off.
async fn bed(api: &str) -> Bed {
    let mut bed = Bed::with(BedOptions {
        docker: DockerMode::Later,
        ..BedOptions::default()
    })
    .await;
    bed.config.rancher.api_version = Some(api.into());
    bed.config.lifecycle.imds_poll = Some(Duration::ZERO);
    bed
}

fn host(bed: &Bed, id: &str) -> HostSnapshot {
    bed.rancher
        .host(id)
        .unwrap_or_else(|| panic!("host {id} in the stand-in"))
}

#[track_caller]
fn untouched(bed: &Bed, id: &str, what: &str) {
    let h = host(bed, id);
    assert_eq!(h.history, ["active"], "{what} ({id}) was touched: {h:?}");
}

#[track_caller]
fn purged(bed: &Bed, id: &str, what: &str) {
    let h = host(bed, id);
    assert_eq!(h.state, "purged", "{what} ({id}) not out: {:?}", h.history);
}

fn completions_of(bed: &Bed, instance: &str) -> Vec<Completion> {
    bed.asg
        .completions()
        .into_iter()
        .filter(|c| c.instance_id == instance)
        .collect()
}

/// Completed once, with CONTINUE, by drover (by instance id, not by timeout).
#[track_caller]
fn completed_once(bed: &Bed, instance: &str) {
    let done = completions_of(bed, instance);
    assert_eq!(done.len(), 1, "{instance}: {done:?}");
    assert_eq!(done[0].result, "CONTINUE", "{instance}");
    assert!(!done[0].by_timeout && !done[0].by_token, "{done:?}");
}

/// The line `drover reap` printed for a host (or instance), by its first word.
fn word_for<'a>(run: &'a Run, id: &str) -> Option<&'a str> {
    run.stdout.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        let word = words.next()?;
        let host = words.next()?;
        let instance = words.next()?;
        (host == id || instance == id).then_some(word)
    })
}

/// The host drover would have left of a labelled instance: both aws.* labels.
fn labelled(instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("aws.instance_id".to_string(), instance.to_string()),
        ("aws.autoscaling_group".to_string(), GROUP.to_string()),
    ])
}

fn sweep_record(dir: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("reaper-sweep.json")).expect("the sweep record");
    serde_json::from_str(&text).expect("the sweep record is JSON")
}

/// Rancher saw no action at all: no host was touched.
#[track_caller]
fn no_host_actions(bed: &Bed) {
    let posts: Vec<_> = bed
        .rancher
        .requests()
        .into_iter()
        .filter(|r| r.method != "GET")
        .collect();
    assert!(posts.is_empty(), "{posts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_disconnected_host_under_both_api_versions() {
    for api in API_VERSIONS {
        let bed = bed(api).await;
        let (gone, gone_host) = bed.add_dead_peer(1, Fate::Gone);
        let (_, partitioned_host) = bed.add_dead_peer(2, Fate::InService);
        let (waiting, waiting_host) = bed.add_dead_peer(3, Fate::Terminating(Duration::ZERO));
        // Terminating now, at the hook a few seconds later: completed once it gets there.
        let (terminating, terminating_host) =
            bed.add_dead_peer(4, Fate::Terminating(Duration::from_secs(4)));
        // Connected, though no group knows its instance.
        let (unknown, connected_host) = bed.add_peer(5);
        bed.asg.vanish(&unknown);
        // Its agent missed its pings, but the server has not given up on it yet.
        let (back_soon, reconnecting_host) = bed.add_peer(6);
        bed.asg.vanish(&back_soon);
        bed.rancher.lose_agent(
            &reconnecting_host,
            Duration::ZERO,
            Duration::from_secs(3600),
        );
        // A host someone added by hand: no labels at all.
        let manual_host = bed.rancher.add_host(HostSpec {
            hostname: "hand-made".into(),
            ..HostSpec::default()
        });
        bed.rancher
            .lose_agent(&manual_host, Duration::ZERO, Duration::ZERO);
        // A host of the same environment in another region, dead or behind a partition:
        // Auto Scaling here knows nothing of its instance, which does not make it gone.
        let mut elsewhere = labelled("i-0e15e0000000000e1");
        elsewhere.insert("aws.region".into(), "eu-west-1".into());
        let elsewhere_host = bed.rancher.add_host(HostSpec {
            hostname: "elsewhere".into(),
            labels: elsewhere,
            ..HostSpec::default()
        });
        bed.rancher
            .lose_agent(&elsewhere_host, Duration::ZERO, Duration::ZERO);
        // This instance's own host, disconnected.
        let own_host = add_active_host(&bed.rancher, &testbed::imds::ImdsOptions::default());
        bed.rancher
            .lose_agent(&own_host, Duration::ZERO, Duration::ZERO);
        assert_eq!(
            bed.asg.lifecycle_state(&terminating).as_deref(),
            Some("Terminating")
        );

        let run = bed.drover(&["reap"]).await;
        run.assert_code(0);

        for (what, id) in [
            ("instance gone", &gone_host),
            ("Terminating:Wait", &waiting_host),
            ("Terminating", &terminating_host),
        ] {
            purged(&bed, id, &format!("{api}: {what}"));
            assert_eq!(
                word_for(&run, id),
                Some("reaped"),
                "{api} {what}\n{}",
                run.stdout
            );
        }
        for (what, id) in [
            ("in service behind a partition", &partitioned_host),
            ("connected but unknown to Auto Scaling", &connected_host),
            ("reconnecting", &reconnecting_host),
            ("manual, without labels", &manual_host),
            ("of another region, unknown here", &elsewhere_host),
            ("this host itself", &own_host),
        ] {
            untouched(&bed, id, &format!("{api}: {what}"));
            assert_eq!(
                word_for(&run, id),
                Some("left"),
                "{api} {what}\n{}",
                run.stdout
            );
        }
        completed_once(&bed, &waiting);
        completed_once(&bed, &terminating);
        assert!(completions_of(&bed, &gone).is_empty());
        assert_eq!(
            bed.asg.completions().len(),
            2,
            "{api}: {:?}",
            bed.asg.completions()
        );
        // The evidence: the agent as Rancher said it, Auto Scaling's answer.
        let line = run
            .stdout
            .lines()
            .find(|l| l.contains(&partitioned_host))
            .expect("a line for the partitioned host");
        assert!(
            line.contains("agent disconnected") && line.contains("InService in group crawlers"),
            "{line}"
        );
        let record = sweep_record(&bed.state_dir());
        let mut reaped: Vec<&str> = record["reaped"]
            .as_array()
            .expect("reaped")
            .iter()
            .filter_map(|v| v.as_str())
            .collect();
        reaped.sort();
        let mut want = vec![gone.as_str(), waiting.as_str(), terminating.as_str()];
        want.sort();
        assert_eq!(reaped, want, "{api}");
        assert_eq!(record["labelled_hosts"], 8, "{api}: {record}");
        // Only the one connected but unknown to Auto Scaling: the rest are dead, partitioned
        // or reconnecting, and sweep nothing.
        assert_eq!(record["connected_labelled_hosts"], 1, "{api}: {record}");
        let line = run
            .stdout
            .lines()
            .find(|l| l.contains(&elsewhere_host))
            .expect("a line for the host of another region");
        assert!(line.contains("eu-west-1"), "{line}");
        assert_eq!(record["refused"], serde_json::Value::Null);

        // The reconnecting agent gives up: the next sweep takes that host out too.
        bed.rancher
            .lose_agent(&reconnecting_host, Duration::ZERO, Duration::ZERO);
        let again = bed.drover(&["reap"]).await;
        again.assert_code(0);
        purged(
            &bed,
            &reconnecting_host,
            &format!("{api}: disconnected at last"),
        );
        untouched(&bed, &partitioned_host, "still partitioned");
        assert_eq!(bed.asg.completions().len(), 2, "nothing completed twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auto_scaling_that_is_blind_failing_or_throttling_touches_nothing() {
    let cases: [(&str, Option<Fault>); 3] = [
        ("does not know this instance", None),
        ("ServiceUnavailable", Some(Fault::Status(503))),
        ("Throttling", Some(Fault::Throttling)),
    ];
    for (why, fault) in cases {
        let bed = bed("v2-beta").await;
        let (_, gone_host) = bed.add_dead_peer(1, Fate::Gone);
        let (_, waiting_host) = bed.add_dead_peer(2, Fate::Terminating(Duration::ZERO));
        match fault {
            // Wrong region, account or credentials look like this: this very instance
            // is unknown.
            None => {
                bed.asg.vanish(&bed.instance_id);
            }
            Some(fault) => bed.asg.fail(
                Match::action("DescribeAutoScalingInstances"),
                fault,
                usize::MAX,
            ),
        }
        let run = bed.drover(&["reap"]).await;
        run.assert_code(1);
        assert!(run.stderr.contains(why), "{why}:\n{}", run.stderr);
        assert!(run.stderr.contains("sweep refused"), "{}", run.stderr);
        untouched(&bed, &gone_host, why);
        untouched(&bed, &waiting_host, why);
        no_host_actions(&bed);
        assert!(bed.asg.completions().is_empty(), "{why}");
        let record = sweep_record(&bed.state_dir());
        assert!(
            record["refused"].as_str().is_some_and(|r| r.contains(why)),
            "{record}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_reapers_at_once_take_a_host_out_once_and_complete_it_once() {
    let mut bed = bed("v2-beta").await;
    // Slow transitions, so that the two take-outs meet on every step.
    bed.rancher.faults().set_latency(Duration::from_millis(100));
    bed.config.reaper.max_per_sweep = Some(5);
    let other = bed.other_instance(9).await;
    let (waiting, waiting_host) = bed.add_dead_peer(1, Fate::Terminating(Duration::ZERO));
    let (gone, gone_host) = bed.add_dead_peer(2, Fate::Gone);

    let (a, b) = tokio::join!(bed.drover(&["reap"]), other.drover(&bed, &["reap"]));
    a.assert_code(0);
    b.assert_code(0);
    purged(&bed, &waiting_host, "Terminating:Wait");
    purged(&bed, &gone_host, "gone");
    completed_once(&bed, &waiting);
    assert!(completions_of(&bed, &gone).is_empty());
    let refused = bed.asg.refused_completions();
    assert!(
        refused.iter().all(|r| r.instance_id == waiting),
        "{refused:?}"
    );
    for (who, run) in [("first", &a), ("second", &b)] {
        let word = word_for(run, &waiting_host);
        assert!(
            word == Some("reaped") || word == Some("left"),
            "{who}: {word:?}\n{}",
            run.stdout
        );
    }

    // A reaper racing the host's own late drover (back after a partition, its instance
    // terminating): out once, completed once.
    let late = bed.other_instance(10).await;
    let late_host = bed.rancher.add_host(HostSpec {
        hostname: "late".into(),
        labels: labelled(&late.instance_id),
        ..HostSpec::default()
    });
    bed.rancher
        .lose_agent(&late_host, Duration::ZERO, Duration::ZERO);
    bed.asg.begin_termination(&late.instance_id, Duration::ZERO);
    let (own, reaper) = tokio::join!(late.drover(&bed, &["deregister"]), bed.drover(&["reap"]));
    own.assert_code(0);
    reaper.assert_code(0);
    purged(&bed, &late_host, "the late drover's host");
    completed_once(&bed, &late.instance_id);
    // The second drover of the first race swept too; its state dir has its own record.
    assert!(sweep_record(&other.state_dir())["instance_id"] == other.instance_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_candidates_than_max_per_sweep_page_once_and_take_out_the_first() {
    let mut bed = bed("v1").await;
    bed.config.reaper.max_per_sweep = Some(2);
    bed.config.pager.routing_key = Some(Secret::Inline(ROUTING_KEY.into()));
    let dead: Vec<(String, String)> = (1..=5).map(|n| bed.add_dead_peer(n, Fate::Gone)).collect();
    let run = bed.drover(&["reap"]).await;
    run.assert_code(0);
    let out: Vec<&String> = dead
        .iter()
        .map(|(_, h)| h)
        .filter(|h| host(&bed, h).state == "purged")
        .collect();
    assert_eq!(out.len(), 2, "{}", run.stdout);
    let deferred = dead
        .iter()
        .filter(|(_, h)| word_for(&run, h) == Some("deferred"))
        .count();
    assert_eq!(deferred, 3, "{}", run.stdout);
    for (_, h) in dead.iter().filter(|(_, h)| !out.contains(&h)) {
        untouched(&bed, h, "past the cap");
    }
    let events = bed.pager.events();
    assert_eq!(events.len(), 1, "one page: {events:?}");
    let page = &events[0];
    assert_eq!(page["event_action"], "trigger");
    assert_eq!(page["dedup_key"], "drover-reap-1a5");
    let text = page.to_string();
    for (instance, _) in &dead {
        assert!(
            text.contains(instance.as_str()),
            "{instance} in the page: {text}"
        );
    }
    assert!(run.stdout.contains("paged"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_changes_nothing_and_prints_what_it_would_do() {
    let mut bed = bed("v2-beta").await;
    bed.config.pager.routing_key = Some(Secret::Inline(ROUTING_KEY.into()));
    bed.config.reaper.max_per_sweep = Some(1);
    let (_, gone_host) = bed.add_dead_peer(1, Fate::Gone);
    let (waiting, waiting_host) = bed.add_dead_peer(2, Fate::Terminating(Duration::ZERO));
    let warmed = "i-0000000000000aaaa";
    warm_then_terminate(&bed, GROUP, warmed).await;

    for (how, args, env) in [
        ("--dry-run", &["reap", "--dry-run"][..], None),
        ("reaper.dry_run", &["reap"][..], Some("true")),
    ] {
        bed.extra_env = env
            .map(|v| vec![("DROVER_REAPER_DRY_RUN".to_string(), v.to_string())])
            .unwrap_or_default();
        let run = bed.drover(args).await;
        run.assert_code(0);
        assert_eq!(
            word_for(&run, &gone_host),
            Some("would-reap"),
            "{how}\n{}",
            run.stdout
        );
        assert_eq!(word_for(&run, &waiting_host), Some("deferred"), "{how}");
        assert_eq!(word_for(&run, warmed), Some("would-complete"), "{how}");
        untouched(&bed, &gone_host, how);
        untouched(&bed, &waiting_host, how);
        no_host_actions(&bed);
        assert!(bed.asg.completions().is_empty(), "{how}");
        assert!(
            bed.pager.events().is_empty(),
            "{how}: a dry run pages nobody"
        );
        assert_eq!(
            bed.asg.lifecycle_state(&waiting).as_deref(),
            Some("Terminating:Wait")
        );
        assert_eq!(sweep_record(&bed.state_dir())["dry_run"], true);
    }
}

/// Puts `instance` in `group`'s warm pool (stopped) and then terminates it from there: it
/// waits in `Warmed:Terminating:Wait` on the group's termination hook.
async fn warm_then_terminate(bed: &Bed, group: &str, instance: &str) {
    warm(bed, group, instance).await;
    assert!(bed.asg.terminate_warmed(instance, Duration::ZERO));
    assert_eq!(
        bed.asg.lifecycle_state(instance).as_deref(),
        Some("Warmed:Terminating:Wait")
    );
}

async fn warm(bed: &Bed, group: &str, instance: &str) {
    bed.asg.warm_instance(
        group,
        instance,
        "m5.large",
        "us-east-1b",
        Duration::ZERO,
        "Warmed:Stopped",
    );
    eventually("resting in the warm pool", LONG, || {
        (bed.asg.lifecycle_state(instance).as_deref() == Some("Warmed:Stopped")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_lets_go_of_this_groups_warmed_instances_terminating_without_a_host() {
    let bed = bed("v2-beta").await;
    bed.asg.add_group(
        "other-group",
        vec![HookSpec {
            name: HOOK.into(),
            transition: TERMINATING.into(),
            heartbeat_timeout: HOOK_TIMEOUT,
            default_result: "ABANDON".into(),
        }],
    );
    let first = "i-00000000000000aa1";
    let second = "i-00000000000000aa2";
    let stopped = "i-00000000000000aa3";
    let elsewhere = "i-00000000000000aa4";
    warm_then_terminate(&bed, GROUP, first).await;
    warm_then_terminate(&bed, GROUP, second).await;
    warm(&bed, GROUP, stopped).await;
    warm_then_terminate(&bed, "other-group", elsewhere).await;

    let run = bed.drover(&["reap"]).await;
    run.assert_code(0);
    completed_once(&bed, first);
    completed_once(&bed, second);
    assert_eq!(word_for(&run, first), Some("completed"), "{}", run.stdout);
    assert!(completions_of(&bed, stopped).is_empty());
    assert_eq!(
        bed.asg.lifecycle_state(stopped).as_deref(),
        Some("Warmed:Stopped")
    );
    assert_eq!(word_for(&run, stopped), Some("left"), "{}", run.stdout);
    assert!(completions_of(&bed, elsewhere).is_empty());
    assert_eq!(
        bed.asg.lifecycle_state(elsewhere).as_deref(),
        Some("Warmed:Terminating:Wait"),
        "another group's pool is not this drover's"
    );
    assert_eq!(word_for(&run, elsewhere), None, "{}", run.stdout);
    // Only this group's pool was asked for.
    let pools: Vec<String> = bed
        .asg
        .requests()
        .into_iter()
        .filter(|r| r.action == "DescribeWarmPool")
        .map(|r| r.action)
        .collect();
    assert_eq!(pools.len(), 1);

    // Again: nothing is completed twice.
    let again = bed.drover(&["reap"]).await;
    again.assert_code(0);
    completed_once(&bed, first);
    completed_once(&bed, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_message_of_a_warmed_instance_terminating_is_answered_not_handed_back() {
    let mut bed = Bed::with(BedOptions {
        queue: true,
        ..BedOptions::default()
    })
    .await;
    bed.config.lifecycle.imds_poll = Some(Duration::ZERO);
    let (moto, queue) = bed.queue();
    let warmed = "i-00000000000000bb1";
    let mut run = bed.spawn(&["run"]);
    run.wait_ready(LONG).await.expect("drover run ready");
    warm_then_terminate(&bed, GROUP, warmed).await;
    let token = bed
        .asg
        .action_token(warmed)
        .expect("the termination's token");
    moto.send(queue, &direct_message(warmed, &token)).await;
    eventually("the warmed instance's action completed", LONG, || {
        completions_of(&bed, warmed).into_iter().next()
    })
    .await;
    completed_once(&bed, warmed);
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    while moto.approximate_counts(queue).await != (0, 0) {
        assert!(
            tokio::time::Instant::now() < end,
            "the message was not deleted"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        run.stop(LONG).await.expect("stops"),
        Some(0),
        "{}",
        run.output()
    );
    assert_eq!(bed.my_hosts().len(), 1, "this host stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drover_run_sweeps_on_its_own_and_reaps() {
    let mut bed = Bed::start().await;
    bed.config.lifecycle.imds_poll = Some(Duration::ZERO);
    bed.config.reaper.interval = Some(Duration::from_secs(2));
    let mut run = bed.spawn(&["run"]);
    run.wait_ready(LONG).await.expect("drover run ready");
    let (waiting, waiting_host) = bed.add_dead_peer(1, Fate::Terminating(Duration::ZERO));
    let (_, partitioned_host) = bed.add_dead_peer(2, Fate::InService);
    // Out of Rancher, then its action completed.
    eventually("the dead peer reaped by a scheduled sweep", LONG, || {
        completions_of(&bed, &waiting).into_iter().next()
    })
    .await;
    purged(&bed, &waiting_host, "reaped");
    completed_once(&bed, &waiting);
    untouched(&bed, &partitioned_host, "partitioned");
    assert_eq!(
        run.stop(LONG).await.expect("stops"),
        Some(0),
        "{}",
        run.output()
    );
    assert_eq!(bed.my_hosts().len(), 1, "its own host stays");
    let record = sweep_record(&bed.state_dir());
    assert_eq!(record["instance_id"], bed.instance_id.as_str());
    assert!(
        run.stderr().contains("reaper sweep done"),
        "{}",
        run.stderr()
    );
}

/// Found by the fault campaign (reaper seed 48): a drover killed after its sweep had
/// removed a dead host but before it completed the instance's lifecycle action left that
/// action to time out, since a removed host is listed nowhere for a later sweep to find.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reaper_killed_before_it_answered_finishes_the_take_out_when_it_runs_again() {
    let mut bed = Bed::start().await;
    bed.config.lifecycle.imds_poll = Some(Duration::ZERO);
    bed.config.reaper.interval = Some(Duration::from_secs(2));
    let (waiting, waiting_host) = bed.add_dead_peer(1, Fate::Terminating(Duration::ZERO));
    let mut run = bed.spawn(&["run"]);
    run.wait_ready(LONG).await.expect("drover run ready");
    // Auto Scaling fails every completion for now: the host goes out, its action waits.
    bed.asg.fail(
        Match::action("CompleteLifecycleAction"),
        Fault::Status(503),
        usize::MAX,
    );
    eventually("the dead peer's host out", LONG, || {
        (host(&bed, &waiting_host).state == "purged").then_some(())
    })
    .await;
    run.kill().await;
    bed.asg.heal();
    assert!(completions_of(&bed, &waiting).is_empty());

    let mut again = bed.spawn(&["run"]);
    again
        .wait_ready(LONG)
        .await
        .expect("drover run ready again");
    eventually("the action completed by the drover run again", LONG, || {
        completions_of(&bed, &waiting).into_iter().next()
    })
    .await;
    completed_once(&bed, &waiting);
    assert_eq!(
        again.stop(LONG).await.expect("stops"),
        Some(0),
        "{}",
        again.output()
    );
    let record = sweep_record(&bed.state_dir());
    assert!(
        record["reaped"]
            .as_array()
            .is_some_and(|r| r.iter().any(|i| i == waiting.as_str())),
        "{record}"
    );
    assert_eq!(bed.my_hosts().len(), 1, "its own host stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reaper_setting_exits_2_naming_the_key() {
    let mut bed = bed("v2-beta").await;
    for (var, value, key) in [
        ("DROVER_REAPER_MAX_PER_SWEEP", "0", "reaper.max_per_sweep"),
        ("DROVER_REAPER_INTERVAL", "soon", "reaper.interval"),
        ("DROVER_REAPER_ENABLED", "perhaps", "reaper.enabled"),
    ] {
        bed.extra_env = vec![(var.to_string(), value.to_string())];
        let run = bed.drover(&["reap"]).await;
        run.assert_code(2);
        assert!(run.stderr.contains(key), "{key}: {}", run.stderr);
    }
}
