//! The termination half end to end: `drover run` and `drover deregister` against the test
//! bed, moto SQS and a private Docker engine.

use std::collections::BTreeMap;
use std::time::Duration;

use testbed::bed::{direct_message, eventually, Bed, BedOptions, GROUP, HOOK, ROUTING_KEY};
use testbed::config::{OnFailure, OnSigterm, Secret};
use testbed::http::{Fault, Match};
use testbed::launch::Running;
use testbed::moto::MotoServer;
use testbed::rancher::{HostSpec, RancherOptions};

const LONG: Duration = Duration::from_secs(60);

/// A bed whose drover watches a fresh moto queue.
async fn bed_with_queue(opts: BedOptions) -> Bed {
    let mut bed = Bed::with(BedOptions {
        queue: true,
        ..opts
    })
    .await;
    // These tests drive terminations through the queue; IMDS polling has its own tests.
    bed.config.lifecycle.imds_poll = Some(Duration::ZERO);
    bed
}

/// `drover run`, once it has told systemd it is ready: registered and watching.
async fn run_ready(bed: &Bed) -> Running {
    let mut run = bed.spawn(&["run"]);
    run.wait_ready(LONG).await.expect("drover run ready");
    run
}

/// SIGTERM, as at power-off; the exit code.
async fn stop(run: &mut Running) -> Option<i32> {
    run.stop(LONG).await.expect("drover run stops")
}

/// The pager with a routing key, so that drover pages.
fn with_routing_key(bed: &mut Bed) {
    bed.config.pager.routing_key = Some(Secret::Inline(ROUTING_KEY.into()));
}

fn completions_of(bed: &Bed, instance: &str) -> Vec<testbed::autoscaling::Completion> {
    bed.asg
        .completions()
        .into_iter()
        .filter(|c| c.instance_id == instance)
        .collect()
}

async fn queue_empty(moto: &MotoServer, queue: &str) {
    let end = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if moto.approximate_counts(queue).await == (0, 0) {
            return;
        }
        assert!(tokio::time::Instant::now() < end, "queue not empty");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_message_takes_the_host_out_and_completes_the_hook() {
    let bed = bed_with_queue(BedOptions::default()).await;
    let (moto, queue) = bed.queue();
    let host_id = bed.register().await;
    // A ghost with the same hostname (another engine's host, long gone) must stay untouched.
    let hostname = bed.rancher.host(&host_id).expect("host").hostname;
    let ghost = bed.rancher.add_host(HostSpec {
        hostname,
        labels: BTreeMap::from([("aws.instance_id".to_string(), "i-0ffffffffffffffff".into())]),
        state: "active".into(),
        agent_state: Some("disconnected".into()),
        agent_ip: "10.0.9.9".into(),
    });
    let mut run = run_ready(&bed).await;

    let token = bed
        .asg
        .begin_termination(&bed.instance_id, Duration::ZERO)
        .expect("token");
    moto.send(queue, &direct_message(&bed.instance_id, &token))
        .await;
    let done = eventually("hook completed", LONG, || {
        completions_of(&bed, &bed.instance_id).into_iter().next()
    })
    .await;
    assert_eq!(done.result, "CONTINUE");
    // By instance id, never by the message's token (a forged message could carry another
    // instance's).
    assert!(!done.by_token && !done.by_timeout);
    assert_eq!((done.group.as_str(), done.hook.as_str()), (GROUP, HOOK));

    let host = bed.rancher.host(&host_id).expect("host");
    assert_eq!(host.state, "purged", "{:?}", host.history);
    for step in [
        "deactivating",
        "inactive",
        "removing",
        "removed",
        "purging",
        "purged",
    ] {
        assert!(
            host.history.iter().any(|s| s == step),
            "{step}: {:?}",
            host.history
        );
    }
    let ghost = bed.rancher.host(&ghost).expect("ghost");
    assert_eq!(ghost.history, vec!["active".to_string()], "ghost untouched");
    queue_empty(moto, queue).await;
    // The local agent stops reconnecting.
    let agent = eventually("rancher-agent stopped", LONG, || {
        let c = futures_executor_block(bed.docker.container("rancher-agent"));
        c.filter(|c| !c.running)
    })
    .await;
    assert!(!agent.running);

    // Stays up after its own termination, until SIGTERM.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stop(&mut run).await, Some(0), "{}", run.output());
    assert_eq!(completions_of(&bed, &bed.instance_id).len(), 1);
    let record = std::fs::read_to_string(
        bed.state_dir()
            .join(format!("takeout-{}.json", bed.instance_id)),
    )
    .expect("take-out record");
    assert!(record.contains("\"hook_completed\": true"), "{record}");
}

/// Runs a future to completion from a sync closure (the helpers poll with closures).
fn futures_executor_block<F: std::future::Future>(f: F) -> F::Output {
    tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(f))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_shape_and_the_test_notification() {
    let bed = bed_with_queue(BedOptions::default()).await;
    let (moto, queue) = bed.queue();
    bed.register().await;
    let (eb_instance, eb_host) = bed.add_peer(1);
    let (sns_instance, sns_host) = bed.add_peer(2);
    let mut run = run_ready(&bed).await;

    moto.send(
        queue,
        &serde_json::json!({
            "AccountId": "123456789012", "RequestId": "r-1",
            "AutoScalingGroupARN": "arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:x:autoScalingGroupName/crawlers",
            "AutoScalingGroupName": GROUP, "Service": "AWS Auto Scaling",
            "Event": "autoscaling:TEST_NOTIFICATION", "Time": "2026-11-23T12:00:00.000Z"
        })
        .to_string(),
    )
    .await;
    let eb_token = bed
        .asg
        .begin_termination(&eb_instance, Duration::ZERO)
        .expect("token");
    moto.send(
        queue,
        &serde_json::json!({
            "version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
            "detail-type": "EC2 Instance-terminate Lifecycle Action",
            "source": "aws.autoscaling", "account": "123456789012",
            "time": "2026-11-23T12:00:00Z", "region": "us-east-1",
            "resources": ["arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:x"],
            "detail": {
                "LifecycleActionToken": eb_token, "AutoScalingGroupName": GROUP,
                "LifecycleHookName": HOOK, "EC2InstanceId": eb_instance,
                "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING",
                "Origin": "AutoScalingGroup", "Destination": "EC2"
            }
        })
        .to_string(),
    )
    .await;
    let sns_token = bed
        .asg
        .begin_termination(&sns_instance, Duration::ZERO)
        .expect("token");
    moto.send(
        queue,
        &serde_json::json!({
            "Type": "Notification", "MessageId": "m-1",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:lifecycle",
            "Subject": "Auto Scaling:  Lifecycle action 'TERMINATING' for instance",
            "Message": direct_message(&sns_instance, &sns_token),
            "Timestamp": "2026-11-23T12:00:00.000Z", "SignatureVersion": "1"
        })
        .to_string(),
    )
    .await;

    for (instance, host) in [(&eb_instance, &eb_host), (&sns_instance, &sns_host)] {
        let c = eventually("peer hook completed", LONG, || {
            completions_of(&bed, instance).into_iter().next()
        })
        .await;
        assert_eq!(c.result, "CONTINUE");
        assert_eq!(bed.rancher.host(host).expect("host").state, "purged");
    }
    queue_empty(moto, queue).await;
    // The own host was not touched by peers' terminations.
    assert_eq!(bed.my_hosts()[0].state, "active");
    assert_eq!(stop(&mut run).await, Some(0));
    assert!(
        run.output().contains("test notification"),
        "{}",
        run.output()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_a_host_here_is_handed_back_and_never_deleted() {
    let bed = bed_with_queue(BedOptions::default()).await;
    let (moto, queue) = bed.queue();
    bed.register().await;
    let mut run = run_ready(&bed).await;
    let stranger = "i-0123456789abcdef0";
    moto.send(
        queue,
        &direct_message(stranger, "11111111-2222-3333-4444-555555555555"),
    )
    .await;
    // Handed back at once (visibility 0): this drover, the only consumer, receives it
    // again right away, and hands it back again.
    run.wait_output("the stranger's message handed back twice", LONG, |out| {
        out.matches("no host of this environment belongs to that instance")
            .count()
            >= 2
    })
    .await
    .expect("handed back twice");
    // A message for a peer whose host is here but which its group shows in service is a
    // forgery (or a mistake): the peer's host stays, and so does the message.
    let (healthy, healthy_host) = bed.add_peer(7);
    moto.send(
        queue,
        &direct_message(&healthy, "66666666-7777-8888-9999-000000000000"),
    )
    .await;
    // What drover decided is known only from it: its log says why it left the host alone.
    run.wait_for_output("not terminating", LONG)
        .await
        .expect("the peer found in service");
    // A plain host of the environment, its instance in no group: nothing confirms that it
    // is terminating, so a message about it is a claim only, and its host stays.
    let plain = "i-0000000000000beef";
    let plain_host = bed.rancher.add_host(HostSpec {
        hostname: "plain".into(),
        labels: BTreeMap::from([("aws.instance_id".to_string(), plain.to_string())]),
        state: "active".into(),
        agent_state: None,
        agent_ip: "10.0.3.200".into(),
    });
    moto.send(
        queue,
        &direct_message(plain, "77777777-8888-9999-aaaa-bbbbbbbbbbbb"),
    )
    .await;
    run.wait_for_output("is in no Auto Scaling group", LONG)
        .await
        .expect("the plain host found in no group");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Never deleted: all are in the queue, or in its dead-letter queue when the hand-backs
    // used up the redrive policy's 5 receives (the stranger's can, in a couple of seconds).
    let (visible, hidden) = moto.approximate_counts(queue).await;
    let (dead, dead_hidden) = moto.approximate_counts(&format!("{queue}-dlq")).await;
    assert_eq!(
        visible + hidden + dead + dead_hidden,
        3,
        "every message is still in the queue or its dead-letter queue"
    );
    assert!(bed.asg.completions().is_empty());
    for id in [&healthy_host, &plain_host] {
        let host = bed.rancher.host(id).expect("peer host");
        assert_eq!(host.history, vec!["active".to_string()], "{id}");
    }
    assert_eq!(stop(&mut run).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_auto_scaling_cannot_name_keeps_the_message_and_pages() {
    let mut bed = bed_with_queue(BedOptions::default()).await;
    let host_id = bed.register().await;
    with_routing_key(&mut bed);
    let (moto, queue) = bed.queue();
    let mut run = run_ready(&bed).await;
    let token = bed
        .asg
        .begin_termination(&bed.instance_id, Duration::ZERO)
        .expect("token");
    // DescribeLifecycleHooks refused: drover cannot tell which action waits, so it must
    // neither claim the hook done nor delete the message.
    bed.asg.fail(
        Match::action("DescribeLifecycleHooks"),
        Fault::ValidationError,
        1000,
    );
    moto.send(queue, &direct_message(&bed.instance_id, &token))
        .await;
    // Nothing outside drover shows that it gave up on the message for now, and the take-out
    // record is written just before: its log line is the point to look at the queue.
    run.wait_for_output("lifecycle action not completed", LONG)
        .await
        .expect("drover keeps the message");
    assert_eq!(bed.rancher.host(&host_id).expect("host").state, "purged");
    assert!(completions_of(&bed, &bed.instance_id).is_empty());
    let pages = bed.pager.events();
    assert_eq!(pages.len(), 1, "{pages:?}");
    assert!(
        pages[0].to_string().contains("find the lifecycle action"),
        "{}",
        pages[0]
    );
    let (visible, hidden) = moto.approximate_counts(queue).await;
    assert_eq!(visible + hidden, 1, "the message stays for another try");
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            bed.state_dir()
                .join(format!("takeout-{}.json", bed.instance_id)),
        )
        .expect("take-out record"),
    )
    .expect("json");
    assert_eq!(record["taken_out"], true);
    assert_eq!(record["hook_completed"], false);
    assert_eq!(stop(&mut run).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_transitions_are_covered_by_heartbeats() {
    let bed = bed_with_queue(BedOptions {
        rancher: RancherOptions {
            transition_delay: Duration::from_secs(3),
            ..BedOptions::default().rancher
        },
        hook_timeout: Duration::from_secs(3),
        ..BedOptions::default()
    })
    .await;
    let (moto, queue) = bed.queue();
    bed.register().await;
    let mut run = run_ready(&bed).await;
    let token = bed
        .asg
        .begin_termination(&bed.instance_id, Duration::ZERO)
        .expect("token");
    moto.send(queue, &direct_message(&bed.instance_id, &token))
        .await;
    let done = eventually("hook completed", LONG, || {
        completions_of(&bed, &bed.instance_id).into_iter().next()
    })
    .await;
    // Three transitions of 3 s each outlast a 3 s heartbeat timeout: only heartbeats kept
    // the action alive until drover answered.
    assert!(!done.by_timeout, "timed out instead of being completed");
    assert_eq!(done.result, "CONTINUE");
    assert!(
        bed.asg.heartbeats().len() >= 3,
        "heartbeats: {:?}",
        bed.asg.heartbeats()
    );
    assert_eq!(stop(&mut run).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rancher_failing_throughout_pages_then_answers_on_failure() {
    let mut bed = bed_with_queue(BedOptions::default()).await;
    bed.register().await;
    with_routing_key(&mut bed);
    bed.config.lifecycle.drain_timeout = Some(Duration::from_secs(5));
    bed.config.lifecycle.on_failure = Some(OnFailure::Abandon);
    bed.config.pager.webhook_url = Some(bed.pager.webhook_url());
    let (moto, queue) = bed.queue();
    let mut run = run_ready(&bed).await;
    // From now on every action (a POST on a host) answers 503, and the pager is rate
    // limited twice.
    bed.rancher.fail(
        Match::path("/hosts").method("POST"),
        Fault::Status(503),
        100_000,
    );
    bed.pager
        .fail(Match::path(testbed::pager::ENQUEUE), Fault::Throttling, 2);
    let token = bed
        .asg
        .begin_termination(&bed.instance_id, Duration::ZERO)
        .expect("token");
    moto.send(queue, &direct_message(&bed.instance_id, &token))
        .await;
    let done = eventually("hook answered", LONG, || {
        completions_of(&bed, &bed.instance_id).into_iter().next()
    })
    .await;
    assert_eq!(done.result, "ABANDON");
    let events = bed.pager.events();
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event["event_action"], "trigger");
    assert_eq!(event["dedup_key"], format!("drover-{}", bed.instance_id));
    let summary = event["payload"]["summary"].as_str().expect("summary");
    assert!(
        summary.contains(&bed.instance_id)
            && summary.contains("deactivate")
            && summary.contains(GROUP),
        "{summary}"
    );
    assert!(
        event["payload"]["custom_details"]["timeline"].is_array(),
        "{event}"
    );
    let enqueues = bed
        .pager
        .requests()
        .iter()
        .filter(|r| r.path == "/v2/enqueue")
        .count();
    assert_eq!(enqueues, 3, "two 429s, then accepted");
    assert_eq!(bed.pager.webhooks().len(), 1);
    // The hook is completed (with ABANDON), so the message goes.
    queue_empty(moto, queue).await;
    assert_eq!(stop(&mut run).await, Some(0));
    // The page came before the lifecycle answer.
    let out = run.output();
    let paged_at = out.find("paged: deactivate failed").expect("paged");
    let answered_at = out.find("completed lifecycle action").expect("answered");
    assert!(paged_at < answered_at, "{out}");
    assert!(!out.contains(ROUTING_KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_removing_then_restarted_resumes_and_completes_once() {
    let mut bed = Bed::with(BedOptions {
        rancher: RancherOptions {
            transition_delay: Duration::from_millis(500),
            ..BedOptions::default().rancher
        },
        ..BedOptions::default()
    })
    .await;
    bed.config.lifecycle.imds_poll = Some(Duration::from_millis(300));
    let host_id = bed.register().await;
    bed.rancher.stick(&host_id, "removing");
    let mut first = run_ready(&bed).await;
    bed.asg.begin_termination(&bed.instance_id, Duration::ZERO);
    bed.imds.set_target_lifecycle_state(Some("Terminated"));
    eventually("host removing", LONG, || {
        bed.rancher.host(&host_id).filter(|h| h.state == "removing")
    })
    .await;
    first.kill().await;
    bed.rancher.unstick(&host_id);

    let mut second = bed.spawn(&["run"]);
    second
        .wait_for_output("resuming an unfinished take-out", LONG)
        .await
        .expect("the take-out resumed");
    let done = eventually("hook completed", LONG, || {
        completions_of(&bed, &bed.instance_id).into_iter().next()
    })
    .await;
    assert_eq!(done.result, "CONTINUE");
    assert_eq!(bed.rancher.host(&host_id).expect("host").state, "purged");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(completions_of(&bed, &bed.instance_id).len(), 1);
    // Only one host ever, and no new registration on the way out.
    assert_eq!(bed.rancher.bootstraps_seen().len(), 1);
    assert_eq!(stop(&mut second).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_twice_completes_once_and_malformed_ones_stay() {
    let bed = bed_with_queue(BedOptions::default()).await;
    let (moto, queue) = bed.queue();
    bed.register().await;
    let mut run = run_ready(&bed).await;
    moto.send(queue, "this is not json").await;
    moto.send(queue, "{\"EC2InstanceId\": 42}").await;
    let token = bed
        .asg
        .begin_termination(&bed.instance_id, Duration::ZERO)
        .expect("token");
    let body = direct_message(&bed.instance_id, &token);
    moto.send(queue, &body).await;
    moto.send(queue, &body).await;
    eventually("hook completed", LONG, || {
        completions_of(&bed, &bed.instance_id).into_iter().next()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(completions_of(&bed, &bed.instance_id).len(), 1);
    let (visible, hidden) = moto.approximate_counts(queue).await;
    assert_eq!(
        visible + hidden,
        2,
        "the two malformed messages stay for the redrive policy"
    );
    assert_eq!(stop(&mut run).await, Some(0));
    let out = run.output();
    assert!(out.contains("malformed lifecycle message"), "{out}");
    assert!(!out.contains(&token), "the token is never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imds_terminated_seconds_before_terminating_wait() {
    let mut bed = Bed::start().await;
    bed.config.lifecycle.imds_poll = Some(Duration::from_millis(300));
    let host_id = bed.register().await;
    let mut run = run_ready(&bed).await;
    // IMDS says Terminated now; the group reaches Terminating:Wait only 4 s later.
    bed.asg
        .begin_termination(&bed.instance_id, Duration::from_secs(4));
    bed.imds.set_target_lifecycle_state(Some("Terminated"));
    let done = eventually("hook completed", LONG, || {
        completions_of(&bed, &bed.instance_id).into_iter().next()
    })
    .await;
    assert_eq!(done.result, "CONTINUE");
    assert!(
        !done.by_token,
        "IMDS gives no token: completed by instance id"
    );
    // drover asked the group and waited, rather than answering an action not there yet.
    let refused = bed.asg.refused_completions();
    assert!(refused.is_empty(), "{refused:?}");
    let completes = bed
        .asg
        .requests()
        .iter()
        .filter(|r| r.action == "CompleteLifecycleAction")
        .count();
    assert_eq!(completes, 1, "one call, once the group was waiting");
    assert_eq!(bed.rancher.host(&host_id).expect("host").state, "purged");
    assert_eq!(stop(&mut run).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spot_interruption_takes_the_host_out_at_once() {
    let mut bed = Bed::start().await;
    bed.config.lifecycle.imds_poll = Some(Duration::from_millis(300));
    bed.config.lifecycle.evacuate = Some(true);
    let host_id = bed.register().await;
    let mut run = run_ready(&bed).await;
    bed.imds.set_spot_action(Some(serde_json::json!({
        "action": "terminate",
        "time": humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(120)).to_string()
    })));
    eventually("host purged", LONG, || {
        bed.rancher.host(&host_id).filter(|h| h.state == "purged")
    })
    .await;
    let evacuated = bed
        .rancher
        .requests()
        .iter()
        .any(|r| r.query.contains("action=evacuate"));
    assert!(!evacuated, "no time for evacuation with a Spot notice");
    assert!(
        bed.rancher.host_events().is_empty(),
        "no evacuation event either"
    );
    // The group has not started terminating it: nothing to complete.
    assert!(bed.asg.completions().is_empty());
    assert_eq!(stop(&mut run).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_on_sigterm_exit_keeps_the_host() {
    let mut bed = Bed::start().await;
    bed.config.lifecycle.on_sigterm = Some(OnSigterm::Exit);
    bed.config.lifecycle.imds_poll = Some(Duration::ZERO);
    let host_id = bed.register().await;
    let mut run = run_ready(&bed).await;
    assert_eq!(stop(&mut run).await, Some(0));
    assert!(
        run.output().contains("the host stays registered"),
        "{}",
        run.output()
    );
    let host = bed.rancher.host(&host_id).expect("host");
    assert_eq!(host.state, "active");
    assert!(bed
        .rancher
        .requests()
        .iter()
        .all(|r| !r.query.contains("action=")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregister_takes_the_host_out_and_is_idempotent() {
    let bed = Bed::start().await;
    let host_id = bed.register().await;
    let run = bed.drover(&["deregister"]).await;
    run.assert_code(0);
    assert_eq!(bed.rancher.host(&host_id).expect("host").state, "purged");
    assert!(
        run.stderr.contains("no lifecycle action to complete"),
        "{}",
        run.stderr
    );
    assert!(bed.asg.completions().is_empty());
    let again = bed.drover(&["deregister"]).await;
    again.assert_code(0);
    assert!(
        again.stderr.contains("already taken out"),
        "{}",
        again.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregister_if_going_away_acts_only_when_the_machine_goes() {
    // The one-shot unit's ExecStop: a reboot or a plain stop keeps the host.
    let bed = Bed::start().await;
    let host_id = bed.register().await;
    let stay = bed.drover(&["deregister", "--if-going-away"]).await;
    stay.assert_code(0);
    assert!(
        stay.stderr.contains("the host stays registered"),
        "{}",
        stay.stderr
    );
    assert_eq!(bed.rancher.host(&host_id).expect("host").state, "active");
    assert!(bed
        .rancher
        .requests()
        .iter()
        .all(|r| !r.query.contains("action=")));

    // Terminating per IMDS: the host goes and the hook is completed.
    bed.asg.begin_termination(&bed.instance_id, Duration::ZERO);
    bed.imds.set_target_lifecycle_state(Some("Terminated"));
    let go = bed.drover(&["deregister", "--if-going-away"]).await;
    go.assert_code(0);
    assert!(
        go.stderr.contains("target lifecycle state is Terminated"),
        "{}",
        go.stderr
    );
    assert_eq!(bed.rancher.host(&host_id).expect("host").state, "purged");
    let done = completions_of(&bed, &bed.instance_id);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].result, "CONTINUE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_on_sigterm_deregister_takes_the_host_out_first() {
    let mut bed = Bed::start().await;
    bed.config.lifecycle.on_sigterm = Some(OnSigterm::Deregister);
    bed.config.lifecycle.imds_poll = Some(Duration::ZERO);
    let host_id = bed.register().await;
    let mut run = run_ready(&bed).await;
    run.signal(nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    // systemd hears that the stop has begun before the take-out does its work.
    run.wait_stopping(LONG).await.expect("STOPPING=1");
    assert_eq!(
        run.wait(LONG).await.expect("drover run stops"),
        Some(0),
        "{}",
        run.output()
    );
    // drover exited only after the host was out.
    assert_eq!(bed.rancher.host(&host_id).expect("host").state, "purged");
    assert!(run.output().contains("taking the host out before stopping"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_auto_takes_the_host_out_only_when_the_instance_is_terminating() {
    let mut bed = Bed::start().await;
    // IMDS polling off, so that only the signal can act.
    bed.config.lifecycle.imds_poll = Some(Duration::ZERO);
    let host_id = bed.register().await;

    // Not terminating (a reboot, a restart of the service): the host stays.
    let mut run = run_ready(&bed).await;
    assert_eq!(stop(&mut run).await, Some(0));
    assert_eq!(bed.rancher.host(&host_id).expect("host").state, "active");

    // Terminating per IMDS: the host goes, and the hook is completed.
    let mut run = run_ready(&bed).await;
    bed.asg.begin_termination(&bed.instance_id, Duration::ZERO);
    bed.imds.set_target_lifecycle_state(Some("Terminated"));
    assert_eq!(stop(&mut run).await, Some(0), "{}", run.output());
    assert_eq!(bed.rancher.host(&host_id).expect("host").state, "purged");
    let done = completions_of(&bed, &bed.instance_id);
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].result, "CONTINUE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_take_out_pages_and_a_later_success_resolves() {
    let mut bed = Bed::start().await;
    with_routing_key(&mut bed);
    bed.config.lifecycle.drain_timeout = Some(Duration::from_secs(3));
    let host_id = bed.register().await;
    bed.rancher.stick(&host_id, "deactivating");
    let first = bed.drover(&["deregister"]).await;
    first.assert_code(1);
    assert!(first.stderr.contains("paged"), "{}", first.stderr);
    bed.rancher.unstick(&host_id);
    let second = bed.drover(&["deregister"]).await;
    second.assert_code(0);
    assert_eq!(bed.rancher.host(&host_id).expect("host").state, "purged");
    let actions: Vec<String> = bed
        .pager
        .events()
        .iter()
        .map(|e| e["event_action"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(actions, vec!["trigger", "resolve"]);
    assert_eq!(
        bed.pager.events()[1]["dedup_key"],
        format!("drover-{}", bed.instance_id)
    );
}
