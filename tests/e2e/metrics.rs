//! The metrics textfile and `pager.webhook_events` end to end: `drover run` against the test
//! bed and moto SQS, the textfile read by Prometheus's own text parser (`promtool check
//! metrics`, from Debian's `prometheus` package, which scripts/testbed-setup.sh installs).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use testbed::bed::{direct_message, eventually, Bed, BedOptions, GROUP};
use testbed::launch::Running;

const LONG: Duration = Duration::from_secs(60);

/// A bed whose drover watches a fresh moto queue, terminations coming through it only.
async fn bed_with_queue() -> Bed {
    let mut bed = Bed::with(BedOptions {
        queue: true,
        ..BedOptions::default()
    })
    .await;
    bed.config.lifecycle.imds_poll = Some(Duration::ZERO);
    bed
}

async fn run_ready(bed: &Bed) -> Running {
    let mut run = bed.spawn(&["run"]);
    run.wait_ready(LONG).await.expect("drover run ready");
    run
}

async fn stop(run: &mut Running) {
    let code = run.stop(LONG).await.expect("drover run stops");
    assert_eq!(code, Some(0), "{}", run.output());
}

/// `promtool check metrics` on the file: Prometheus's text parser and its linter. Fails the
/// test when promtool is missing: a skipped check would pass unseen.
async fn promtool_check(path: &Path) {
    let text = std::fs::read(path).expect("the textfile");
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; run scripts/testbed-setup.sh base)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(&text).await.expect("to promtool");
    drop(stdin);
    let out = tokio::time::timeout(LONG, child.wait_with_output())
        .await
        .expect("promtool answers")
        .expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {:?} {said}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&text)
    );
}

/// The samples of the file: `name{labels}` to value, as written; none while there is no
/// file.
fn samples(path: &Path) -> BTreeMap<String, f64> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return BTreeMap::new();
    };
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').expect("a sample line");
            (series.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

fn value(path: &Path, series: &str) -> Option<f64> {
    samples(path).get(series).copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_and_a_queue_take_out_are_counted_in_a_textfile_prometheus_reads() {
    let mut bed = bed_with_queue().await;
    let collector = bed.dir.path().join("textfile_collector");
    std::fs::create_dir(&collector).expect("the collector's directory");
    let path = collector.join("drover.prom");
    bed.config.metrics.textfile = Some(path.clone());
    let (moto, queue) = bed.queue();

    // drover run registers the host itself: the registration is this process's.
    let mut run = run_ready(&bed).await;
    assert_eq!(
        value(&path, "drover_registrations_total{outcome=\"registered\"}"),
        Some(1.0),
        "{}",
        run.output()
    );
    let registration = value(&path, "drover_registration_duration_seconds").expect("gauge");
    assert!(registration > 0.0, "{registration}");
    assert_eq!(
        value(&path, "drover_queue_messages_received_total"),
        Some(0.0)
    );
    promtool_check(&path).await;

    let token = bed
        .asg
        .begin_termination(&bed.instance_id, Duration::ZERO)
        .expect("token");
    moto.send(queue, &direct_message(&bed.instance_id, &token))
        .await;
    eventually("the message deleted and counted", LONG, || {
        (value(&path, "drover_queue_messages_deleted_total") == Some(1.0)).then_some(())
    })
    .await;
    let s = samples(&path);
    let take_out = "{outcome=\"done\",source=\"sqs\"}";
    assert_eq!(
        s.get(&format!("drover_take_outs_total{take_out}")),
        Some(&1.0),
        "{s:?}"
    );
    assert!(
        s.get(&format!("drover_take_out_duration_seconds{take_out}"))
            .is_some_and(|secs| *secs > 0.0),
        "{s:?}"
    );
    assert_eq!(s.get("drover_queue_messages_received_total"), Some(&1.0));
    assert_eq!(s.get("drover_queue_messages_handed_back_total"), Some(&0.0));
    assert_eq!(
        s.get("drover_registrations_total{outcome=\"registered\"}"),
        Some(&1.0)
    );
    // No pager configured: nothing paged, nothing failed.
    assert_eq!(s.get("drover_pages_total{outcome=\"sent\"}"), Some(&0.0));
    assert_eq!(s.get("drover_pages_total{outcome=\"failed\"}"), Some(&0.0));
    // Only the failures' and this source's series: no take-out failed.
    assert!(
        !s.keys()
            .any(|k| k.starts_with("drover_take_outs_total") && !k.ends_with(take_out)),
        "{s:?}"
    );
    promtool_check(&path).await;

    let text = std::fs::read_to_string(&path).expect("textfile");
    assert!(
        text.contains("# TYPE drover_take_outs_total counter")
            && text.contains("# HELP drover_take_outs_total ")
            && text.contains("since this drover process started"),
        "{text}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "node_exporter's user reads it");
    let names: Vec<String> = std::fs::read_dir(&collector)
        .expect("collector dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["drover.prom"], "no temp file left behind");
    stop(&mut run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_collector_directory_warns_in_check_and_is_written_once_it_appears() {
    let mut bed = bed_with_queue().await;
    let collector = bed.dir.path().join("later");
    let path = collector.join("drover.prom");
    bed.config.metrics.textfile = Some(path.clone());
    let (moto, queue) = bed.queue();

    let check = bed.drover(&["check"]).await;
    let line = check
        .stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("metrics"))
        .unwrap_or_else(|| panic!("a metrics line in:\n{}", check.stdout))
        .to_string();
    assert!(
        line.starts_with("warn") && line.contains("does not exist"),
        "{line}"
    );

    let mut run = run_ready(&bed).await;
    assert!(!path.exists());
    std::fs::create_dir(&collector).expect("node_exporter installed later");
    // A message for an instance with no host here: handed back, and counted so.
    moto.send(queue, &direct_message("i-0eeeeeeeeeeeeeeee", "t-0"))
        .await;
    eventually(
        "the textfile written once its directory is there",
        LONG,
        || value(&path, "drover_queue_messages_handed_back_total").filter(|n| *n >= 1.0),
    )
    .await;
    // Counted while the directory was missing too: the registration is there.
    assert_eq!(
        value(&path, "drover_registrations_total{outcome=\"registered\"}"),
        Some(1.0)
    );
    promtool_check(&path).await;
    stop(&mut run).await;
    assert!(
        run.output().contains("cannot write the metrics textfile"),
        "{}",
        run.output()
    );
}

/// Peer `n`'s termination through the queue, to its hook completed.
async fn take_out_peer(bed: &Bed, n: u32) -> String {
    let (moto, queue) = bed.queue();
    let (instance, _host) = bed.add_peer(n);
    let token = bed
        .asg
        .begin_termination(&instance, Duration::ZERO)
        .expect("token");
    moto.send(queue, &direct_message(&instance, &token)).await;
    eventually("the peer's hook completed", LONG, || {
        bed.asg
            .completions()
            .into_iter()
            .find(|c| c.instance_id == instance)
    })
    .await;
    instance
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_events_all_posts_every_take_out_failures_posts_none() {
    let mut bed = bed_with_queue().await;
    bed.config.pager.webhook_url = Some(bed.pager.webhook_url());
    bed.register().await;

    // The default, "failures": a take-out that went well is not posted.
    let mut run = run_ready(&bed).await;
    take_out_peer(&bed, 1).await;
    // The post, had there been one, comes right after the completion.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop(&mut run).await;
    assert!(
        bed.pager.webhooks().is_empty(),
        "{:?}",
        bed.pager.webhooks()
    );

    bed.config.pager.webhook_events = Some("all".into());
    let mut run = run_ready(&bed).await;
    let instance = take_out_peer(&bed, 2).await;
    let posted = eventually("the take-out posted", LONG, || {
        bed.pager.webhooks().into_iter().next()
    })
    .await;
    stop(&mut run).await;
    let d = &posted["drover"];
    assert_eq!(d["event"], "take-out", "{posted}");
    assert_eq!(d["instance_id"], instance.as_str());
    assert_eq!(d["group"], GROUP);
    assert_eq!(d["source"], "sqs");
    assert_eq!(d["hook_completed"], true);
    let events: Vec<&str> = d["timeline"]
        .as_array()
        .expect("a timeline")
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    assert!(
        events.iter().any(|e| e.contains("out of Rancher"))
            && events
                .iter()
                .any(|e| e.starts_with("completed lifecycle action")),
        "{events:?}"
    );
    assert!(posted["text"]
        .as_str()
        .is_some_and(|t| t.contains(&instance) && t.contains("taken out")));
    assert_eq!(
        bed.pager.webhooks().len(),
        1,
        "one post, for the one take-out"
    );
    // PagerDuty hears of failures only.
    assert!(bed.pager.events().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_webhook_events_and_a_textfile_not_ending_in_prom_are_config_errors() {
    let mut bed = Bed::start().await;
    bed.config.pager.webhook_events = Some("everything".into());
    let run = bed.drover(&["check"]).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("pager.webhook_events"),
        "{}",
        run.stderr
    );

    bed.config.pager.webhook_events = None;
    bed.config.metrics.textfile = Some(bed.dir.path().join("drover.txt"));
    let run = bed.drover(&["run"]).await;
    assert_eq!(run.code, Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("metrics.textfile"), "{}", run.stderr);
}
