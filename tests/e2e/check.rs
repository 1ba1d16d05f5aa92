//! `drover check` end to end: one line per dependency, exit 0 only when all pass.

use testbed::bed::{Bed, BedOptions, CHECKS, HOOK, ROUTING_KEY};
use testbed::config::Secret;

fn mark_of<'a>(stdout: &'a str, name: &str) -> Option<&'a str> {
    stdout.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        let mark = words.next()?;
        (words.next() == Some(name)).then_some(mark)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_check_passes_against_the_test_bed() {
    let mut bed = Bed::with(BedOptions {
        queue: true,
        ..BedOptions::default()
    })
    .await;
    bed.config.pager.routing_key = Some(Secret::Inline(ROUTING_KEY.into()));
    bed.config.lifecycle.hook_name = Some(HOOK.into());
    let (moto, queue) = bed.queue();
    let run = bed.drover(&["check"]).await;
    run.assert_code(0);
    for name in CHECKS {
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
    assert_eq!(moto.approximate_counts(queue).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_and_missing_hook_fail_with_reasons() {
    let mut bed = Bed::start().await;
    // The file has the right key; the environment beats the file, as on a host whose
    // userdata sets DROVER_* variables over the packaged config.
    bed.extra_env
        .push(("DROVER_RANCHER_ACCESS_KEY".into(), "WRONGKEY".into()));
    bed.config.lifecycle.hook_name = Some("no-such-hook".into());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aws_error_is_one_readable_line() {
    let mut bed = Bed::with(BedOptions {
        queue: true,
        ..BedOptions::default()
    })
    .await;
    let (_, queue) = bed.queue();
    let missing = format!("{}-gone", queue);
    bed.config.lifecycle.queue_url = Some(missing.clone());
    let run = bed.drover(&["check"]).await;
    run.assert_code(1);
    let line = run
        .stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("sqs"))
        .unwrap_or_else(|| panic!("no sqs line in:\n{}", run.stdout));
    assert!(line.starts_with("FAIL"), "{line}");
    // The service's own code and message, not the SDK's dump of the raw response.
    assert!(line.contains("NonExistentQueue"), "{line}");
    for dump in ["Response {", "SdkBody", "raw:", "headers:", "{ "] {
        assert!(!line.contains(dump), "{dump:?} in: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warnings_are_shown_and_leave_the_exit_code_alone() {
    use std::os::unix::fs::PermissionsExt;
    let mut bed = Bed::with(BedOptions {
        queue: true,
        ..BedOptions::default()
    })
    .await;
    bed.config.pager.routing_key = Some(Secret::Inline(ROUTING_KEY.into()));
    bed.config.lifecycle.hook_name = Some(HOOK.into());
    bed.config.lifecycle.handle_peers = Some(false);
    // Never called by check; a name that resolves nowhere all the same.
    bed.config.pager.webhook_url = Some("http://hooks.example.invalid/T0/B0/HOOKSECRET".into());
    // The bed's secret file, opened to the group as a careless copy would leave it.
    let secret_file = bed.dir.path().join("rancher.secret");
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o640))
        .expect("chmod the secret file");
    let run = bed.drover(&["check"]).await;
    run.assert_code(0);
    let warns: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("warn") && l.split_whitespace().nth(1) == Some("config"))
        .collect();
    let about = |what: &str| {
        warns
            .iter()
            .find(|l| l.contains(what))
            .unwrap_or_else(|| panic!("no warn line about {what}:\n{}", run.stdout))
    };
    assert!(about("pager.webhook_url").contains("hooks.example.invalid"));
    assert!(about("lifecycle.handle_peers").contains("handed back"));
    let mode = about("rancher.secret_key_file");
    assert!(
        mode.contains("mode 640") && mode.contains("chmod 600"),
        "{mode}"
    );
    assert!(!run.stdout.contains("HOOKSECRET"), "{}", run.stdout);
    assert!(!run.stderr.contains("HOOKSECRET"), "{}", run.stderr);
    // The rest passes: the loopback Rancher of the bed is not plain http off the machine.
    for name in CHECKS {
        assert_ne!(
            mark_of(&run.stdout, name),
            Some("FAIL"),
            "{name}:\n{}",
            run.stdout
        );
    }
    assert!(
        !warns.iter().any(|l| l.contains("rancher.url")),
        "{}",
        run.stdout
    );
    // Said once: check does not log the same warnings on stderr too.
    assert!(!run.stderr.contains("handed back"), "{}", run.stderr);
}
