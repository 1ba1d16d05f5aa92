//! The way in, end to end: the built binary against the stand-ins (Auto Scaling with
//! launching actions and a warm pool), a private Docker engine and the pager stand-in.
//! Launching actions answered by what registration did, a failed boot paged once, a
//! termination or a stop during registration, and an instance that comes back.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use testbed::autoscaling::{LAUNCHING, TERMINATING};
use testbed::bed::{eventually, Bed, BedOptions, GROUP, HOOK, LAUNCH_HOOK, ROUTING_KEY};
use testbed::config::{OnSigterm, Secret};
use testbed::rancher::RancherOptions;

const LONG: Duration = Duration::from_secs(60);

fn launching_bed(rancher: RancherOptions) -> BedOptions {
    BedOptions {
        launch: Some(Duration::from_secs(300)),
        rancher,
        ..BedOptions::default()
    }
}

fn rancher(register_delay: Duration) -> RancherOptions {
    let defaults = BedOptions::default().rancher;
    RancherOptions {
        register_delay,
        ..defaults
    }
}

/// The completions of this instance's actions of one transition, as (hook, result).
fn completions(bed: &Bed, transition: &str) -> Vec<(String, String)> {
    bed.asg
        .completions()
        .into_iter()
        .filter(|c| c.instance_id == bed.instance_id && c.transition == transition)
        .map(|c| (c.hook, c.result))
        .collect()
}

/// The pager stand-in's trigger events with a dedup key.
fn triggers(bed: &Bed, key: &str) -> usize {
    bed.pager
        .events()
        .iter()
        .filter(|e| e["event_action"] == "trigger" && e["dedup_key"] == key)
        .count()
}

fn resolves(bed: &Bed, key: &str) -> usize {
    bed.pager
        .events()
        .iter()
        .filter(|e| e["event_action"] == "resolve" && e["dedup_key"] == key)
        .count()
}

async fn agent_running(bed: &Bed) -> bool {
    bed.docker
        .container("rancher-agent")
        .await
        .is_some_and(|c| c.running)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_launching_action_continues_once_the_host_is_active() {
    let bed = Bed::with(launching_bed(rancher(Duration::from_secs(1)))).await;
    assert_eq!(
        bed.asg.lifecycle_state(&bed.instance_id).as_deref(),
        Some("Pending:Wait")
    );
    let run = bed.drover(&["register"]).await;
    run.assert_code(0);
    let hosts = bed.my_hosts();
    assert_eq!(hosts.len(), 1, "{}", bed.what_the_bed_saw(&run));
    assert_eq!(hosts[0].state, "active");
    assert_eq!(
        completions(&bed, LAUNCHING),
        [(LAUNCH_HOOK.to_string(), "CONTINUE".to_string())],
        "{}",
        run.all()
    );
    eventually("the instance in service", LONG, || {
        (bed.asg.lifecycle_state(&bed.instance_id).as_deref() == Some("InService")).then_some(())
    })
    .await;
    assert!(
        bed.asg.refused_completions().is_empty(),
        "{:?}",
        bed.asg.refused_completions()
    );

    // Running it again changes nothing and answers nothing twice.
    bed.drover(&["register"]).await.assert_code(0);
    assert_eq!(completions(&bed, LAUNCHING).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_pages_once_abandons_and_the_next_good_boot_resolves() {
    let mut bed = Bed::with(launching_bed(rancher(Duration::from_secs(1)))).await;
    bed.config.pager.routing_key = Some(Secret::Inline(ROUTING_KEY.into()));
    bed.config.rancher.secret_key = Some(Secret::Inline("not-the-key-at-all".into()));
    bed.config.agent.register_timeout = Some(Duration::from_secs(20));
    let key = format!("drover-boot-{}", bed.instance_id);

    let run = bed.drover(&["run"]).await;
    run.assert_code(1);
    assert_eq!(triggers(&bed, &key), 1, "{}", run.all());
    let event = bed
        .pager
        .events()
        .into_iter()
        .find(|e| e["dedup_key"] == key.as_str())
        .expect("the trigger");
    let summary = event["payload"]["summary"].as_str().unwrap_or_default();
    for part in [bed.instance_id.as_str(), GROUP, "connect to Rancher", "401"] {
        assert!(summary.contains(part), "{part} in {summary}");
    }
    assert_eq!(
        completions(&bed, LAUNCHING),
        [(LAUNCH_HOOK.to_string(), "ABANDON".to_string())]
    );
    assert!(bed.my_hosts().is_empty());
    assert!(!run.all().contains("not-the-key-at-all"));

    // systemd restarts it: the same failure raises no second incident.
    bed.drover(&["run"]).await.assert_code(1);
    assert_eq!(triggers(&bed, &key), 1, "one incident, not one per restart");

    // The key is fixed: the next boot registers and resolves the incident.
    bed.config.rancher.secret_key = Some(Secret::File(bed.secret_file()));
    bed.drover(&["register"]).await.assert_code(0);
    assert_eq!(resolves(&bed, &key), 1, "{:?}", bed.pager.events());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_at_power_off_while_registering_takes_out_what_there_is_within_15s() {
    // The host stays `registering` for a minute: drover is mid-registration.
    let mut bed = Bed::with(launching_bed(rancher(Duration::from_secs(60)))).await;
    bed.config.lifecycle.on_sigterm = Some(OnSigterm::Deregister);
    let mut drover = bed.spawn(&["run"]);
    eventually("a host registering", LONG, || {
        bed.my_hosts()
            .first()
            .filter(|h| h.state == "registering")
            .map(|h| h.id.clone())
    })
    .await;
    let sent = Instant::now();
    drover.signal(Signal::SIGTERM).expect("signal");
    let code = drover
        .wait(Duration::from_secs(15))
        .await
        .expect("gone within 15 s");
    assert_eq!(code, Some(0), "{}", drover.output());
    assert!(sent.elapsed() < Duration::from_secs(15));
    assert!(!agent_running(&bed).await, "no agent left running");
    let bootstraps: Vec<_> = bed
        .docker
        .containers()
        .await
        .into_iter()
        .filter(|c| c.running)
        .collect();
    assert!(bootstraps.is_empty(), "{bootstraps:?}");
    assert!(bed.my_hosts().is_empty(), "{:?}", bed.rancher.hosts());
    assert!(
        completions(&bed, LAUNCHING).is_empty(),
        "neither CONTINUE nor ABANDON: the host never became active"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_stop_while_registering_is_prompt_and_leaves_rancher_alone() {
    let bed = Bed::with(launching_bed(rancher(Duration::from_secs(60)))).await;
    // The bed's config says on_sigterm = "exit": a reboot or a plain `systemctl stop`.
    let mut drover = bed.spawn(&["run"]);
    let host = eventually("a host registering", LONG, || {
        bed.my_hosts()
            .first()
            .filter(|h| h.state == "registering")
            .map(|h| h.id.clone())
    })
    .await;
    drover.signal(Signal::SIGTERM).expect("signal");
    let code = drover.wait(Duration::from_secs(15)).await.expect("prompt");
    assert_eq!(code, Some(0), "{}", drover.output());
    let left = bed.rancher.host(&host).expect("the host");
    assert!(
        matches!(left.state.as_str(), "registering" | "active"),
        "left as it was: {left:?}"
    );
    assert!(completions(&bed, LAUNCHING).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_termination_noticed_while_registering_ends_it_and_completes_the_hook() {
    let mut bed = Bed::with(launching_bed(rancher(Duration::from_secs(60)))).await;
    bed.config.lifecycle.imds_poll = Some(Duration::from_millis(500));
    let mut drover = bed.spawn(&["run"]);
    eventually("a host registering", LONG, || {
        bed.my_hosts().first().map(|h| h.id.clone())
    })
    .await;
    // The launch is abandoned by someone else (a timeout, a person): the group terminates.
    let token = bed.asg.action_token(&bed.instance_id);
    assert!(token.is_some());
    bed.imds.set_target_lifecycle_state(Some("Terminated"));
    // Auto Scaling moves on to the termination; drover answers the termination hook.
    complete_launch_by_hand(&bed).await;
    eventually("the termination hook completed", LONG, || {
        (!completions(&bed, TERMINATING).is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        completions(&bed, TERMINATING),
        [(HOOK.to_string(), "CONTINUE".to_string())]
    );
    assert!(bed.my_hosts().is_empty(), "{:?}", bed.rancher.hosts());
    assert!(!agent_running(&bed).await);
    let _ = drover.stop(Duration::from_secs(20)).await;
}

/// The launching action ends without drover (the hook timed out, or a person abandoned
/// it): the instance goes on to terminate.
async fn complete_launch_by_hand(bed: &Bed) {
    let client = aws_sdk_autoscaling::Client::from_conf(
        aws_sdk_autoscaling::Config::builder()
            .behavior_version(aws_sdk_autoscaling::config::BehaviorVersion::latest())
            .region(aws_sdk_autoscaling::config::Region::new("us-east-1"))
            .endpoint_url(bed.asg.url())
            .credentials_provider(aws_sdk_autoscaling::config::Credentials::new(
                "AKIDTEST", "secret", None, None, "test",
            ))
            .build(),
    );
    client
        .complete_lifecycle_action()
        .auto_scaling_group_name(GROUP)
        .lifecycle_hook_name(LAUNCH_HOOK)
        .lifecycle_action_result("ABANDON")
        .instance_id(&bed.instance_id)
        .send()
        .await
        .expect("ABANDON by hand");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_deregister_twice_takes_each_host_out() {
    let bed = Bed::start().await;
    let first = bed.register().await;
    bed.drover(&["deregister"]).await.assert_code(0);
    assert_eq!(
        bed.rancher.host(&first).map(|h| h.state).as_deref(),
        Some("purged")
    );
    // The instance is stopped and started again: same id, a new host.
    let second = bed.register().await;
    assert_ne!(first, second);
    let run = bed.drover(&["deregister"]).await;
    run.assert_code(0);
    assert!(
        !run.all().contains("already taken out"),
        "the old record spoke for the old host: {}",
        run.all()
    );
    assert_eq!(
        bed.rancher.host(&second).map(|h| h.state).as_deref(),
        Some("purged"),
        "{}",
        run.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_of_this_instance_are_both_taken_out() {
    let bed = Bed::start().await;
    let registered = bed.register().await;
    // An earlier boot's host, never taken out.
    let old = testbed::bed::add_active_host(&bed.rancher, &testbed::imds::ImdsOptions::default());
    bed.rancher
        .set_host_state(&old, "active", Some("disconnected"));
    let run = bed.drover(&["deregister"]).await;
    run.assert_code(0);
    for id in [&registered, &old] {
        assert_eq!(
            bed.rancher.host(id).map(|h| h.state).as_deref(),
            Some("purged"),
            "{id}: {}",
            run.all()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_pool_round_trip_with_reuse_leaves_no_ghost() {
    let mut bed = Bed::start().await;
    bed.config.lifecycle.imds_poll = Some(Duration::from_millis(500));
    testbed::bed::add_launch_hook(&bed.asg, Duration::from_secs(300));
    let id = bed.instance_id.clone();
    // Launched into the pool: the launching action holds it in Warmed:Pending:Wait.
    bed.asg.warm_instance(
        GROUP,
        &id,
        "m5.large",
        "us-east-1b",
        Duration::ZERO,
        "Warmed:Stopped",
    );
    bed.imds.set_target_lifecycle_state(Some("Warmed:Stopped"));
    bed.drover(&["register"]).await.assert_code(0);
    assert!(bed.my_hosts().is_empty(), "nothing registers in the pool");
    assert_eq!(
        completions(&bed, LAUNCHING),
        [(LAUNCH_HOOK.to_string(), "CONTINUE".to_string())]
    );
    eventually("resting in the pool", LONG, || {
        (bed.asg.lifecycle_state(&id).as_deref() == Some("Warmed:Stopped")).then_some(())
    })
    .await;

    // Into service.
    assert!(bed.asg.leave_warm_pool(&id, Duration::ZERO));
    bed.imds.set_target_lifecycle_state(Some("InService"));
    let mut drover = bed.spawn(&["run"]);
    drover
        .wait_ready(LONG)
        .await
        .expect("READY once registered");
    let first = bed
        .my_hosts()
        .first()
        .map(|h| h.id.clone())
        .expect("a host");
    assert_eq!(completions(&bed, LAUNCHING).len(), 2);

    // Scale-in with reuse: back to the pool, held on the termination hook.
    eventually("in service", LONG, || {
        (bed.asg.lifecycle_state(&id).as_deref() == Some("InService")).then_some(())
    })
    .await;
    assert!(bed.asg.return_to_warm_pool(&id, Duration::ZERO));
    bed.imds.set_target_lifecycle_state(Some("Warmed:Stopped"));
    eventually("the return answered", LONG, || {
        (!completions(&bed, TERMINATING).is_empty()).then_some(())
    })
    .await;
    assert_eq!(
        bed.rancher.host(&first).map(|h| h.state).as_deref(),
        Some("purged"),
        "{}",
        drover.output()
    );
    assert!(!agent_running(&bed).await);
    let _ = drover.stop(Duration::from_secs(20)).await;

    // Back into service: a new host, then a scale-in for good.
    eventually("resting in the pool again", LONG, || {
        (bed.asg.lifecycle_state(&id).as_deref() == Some("Warmed:Stopped")).then_some(())
    })
    .await;
    assert!(bed.asg.leave_warm_pool(&id, Duration::ZERO));
    bed.imds.set_target_lifecycle_state(Some("InService"));
    let second = bed.register().await;
    assert_ne!(first, second);
    eventually("in service again", LONG, || {
        (bed.asg.lifecycle_state(&id).as_deref() == Some("InService")).then_some(())
    })
    .await;
    bed.asg.begin_termination(&id, Duration::ZERO);
    bed.imds.set_target_lifecycle_state(Some("Terminated"));
    let run = bed.drover(&["deregister"]).await;
    run.assert_code(0);
    assert_eq!(
        bed.rancher.host(&second).map(|h| h.state).as_deref(),
        Some("purged"),
        "{}",
        run.all()
    );
    assert_eq!(completions(&bed, TERMINATING).len(), 2);
}
