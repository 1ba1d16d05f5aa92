//! Secrets end to end: the built drover reading the Rancher secret key (and the PagerDuty
//! routing key) from moto's SSM Parameter Store, as a SecureString or a Secrets Manager
//! secret behind its reference; a secret file cloud-init writes after drover started; one
//! that never comes; and a key rotated in SSM and in Rancher while `drover run` runs. The
//! value of a secret never shows in drover's output, logs or state dir.

use std::time::{Duration, Instant};

use testbed::bed::{all_files_text, Bed, BedOptions, DockerMode, ROUTING_KEY, SECRET};
use testbed::config::{OnSigterm, Secret};

const LONG: Duration = Duration::from_secs(60);
const PARAMETER: &str = "/drover/prod/rancher-secret-key";
const ROUTING_PARAMETER: &str = "/drover/prod/pagerduty-routing-key";

/// A bed with moto's SSM, the secret file gone, and the Rancher key in `PARAMETER`.
async fn bed_with_ssm(docker: DockerMode) -> Bed {
    let mut bed = Bed::with(BedOptions {
        ssm: true,
        docker,
        ..BedOptions::default()
    })
    .await;
    std::fs::remove_file(bed.secret_file()).expect("the bed's secret file");
    bed.moto().put_secure_parameter(PARAMETER, SECRET).await;
    bed.config.rancher.secret_key = Some(Secret::Ssm(PARAMETER.into()));
    bed
}

/// The secrets appear in none of `texts` (what, text), nor in the state dir.
fn assert_no_secret(bed: &Bed, secrets: &[&str], texts: &[(&str, String)]) {
    let mut all = texts.to_vec();
    all.push(("state dir", all_files_text(&bed.state_dir())));
    for (what, text) in all {
        for secret in secrets {
            assert!(!text.contains(secret), "a secret in {what}:\n{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_reads_the_key_from_a_secure_string_parameter() {
    let mut bed = bed_with_ssm(DockerMode::Running).await;
    bed.moto()
        .put_secure_parameter(ROUTING_PARAMETER, ROUTING_KEY)
        .await;
    bed.config.pager.routing_key = Some(Secret::Ssm(ROUTING_PARAMETER.into()));
    bed.config.log.level = Some("trace".into());
    bed.register().await;

    // check says where each secret comes from, and that it could be read.
    let check = bed.drover(&["check"]).await;
    for (name, from) in [
        ("rancher-key", format!("from SSM parameter {PARAMETER}")),
        (
            "pager-key",
            format!("from SSM parameter {ROUTING_PARAMETER}"),
        ),
    ] {
        let line = check
            .stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("no {name} line:\n{}", check.stdout));
        assert!(line.starts_with("ok ") && line.contains(&from), "{line}");
    }
    assert!(
        check
            .stdout
            .lines()
            .any(|l| l.starts_with("ok ") && l.contains(" rancher ")),
        "{}",
        check.stdout
    );

    let again = bed.drover(&["register"]).await;
    again.assert_code(0);
    assert_no_secret(
        &bed,
        &[SECRET, ROUTING_KEY],
        &[("check", check.all()), ("register", again.all())],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_reads_the_key_from_a_secrets_manager_reference() {
    let mut bed = bed_with_ssm(DockerMode::Running).await;
    bed.moto()
        .create_secret("drover/prod/rancher", SECRET)
        .await;
    bed.config.rancher.secret_key = Some(Secret::Ssm(
        "/aws/reference/secretsmanager/drover/prod/rancher".into(),
    ));
    bed.register().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_parameter_is_refused_at_once_naming_the_key() {
    let mut bed = bed_with_ssm(DockerMode::Later).await;
    bed.config.rancher.secret_key = Some(Secret::Ssm("/drover/prod/no-such".into()));
    let started = Instant::now();
    let run = bed.drover(&["register"]).await;
    run.assert_code(1);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "not retried until the budget ({:?})",
        started.elapsed()
    );
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("rancher.secret_key_ssm /drover/prod/no-such does not exist")
            && last.contains("ParameterNotFound"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_file_written_after_drover_started_is_waited_for() {
    let bed = Bed::start().await;
    std::fs::remove_file(bed.secret_file()).expect("the bed's secret file");
    let mut run = bed.spawn(&["register"]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    testbed::config::write_private(&bed.secret_file(), format!("{SECRET}\n").as_bytes())
        .expect("the secret, late");
    let code = run.wait(LONG).await.expect("register ends");
    assert_eq!(code, Some(0), "{}", run.output());
    assert_eq!(bed.my_hosts().len(), 1, "{}", run.output());
    let output = run.output();
    let waiting: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("waiting up to"))
        .collect();
    assert_eq!(waiting.len(), 1, "logged once:\n{output}");
    assert!(
        waiting[0].contains("INFO")
            && waiting[0].contains(&format!(
                "rancher.secret_key_file {}",
                bed.secret_file().display()
            )),
        "{}",
        waiting[0]
    );
    assert_no_secret(&bed, &[SECRET], &[("register", output)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_file_that_never_comes_fails_within_the_budget() {
    let mut bed = Bed::with(BedOptions {
        docker: DockerMode::Later,
        ..BedOptions::default()
    })
    .await;
    std::fs::remove_file(bed.secret_file()).expect("the bed's secret file");
    bed.config.agent.register_timeout = Some(Duration::from_secs(8));
    bed.config.pager.routing_key = Some(Secret::Inline(ROUTING_KEY.into()));
    let started = Instant::now();
    let run = bed.drover(&["register"]).await;
    let took = started.elapsed();
    run.assert_code(1);
    assert!(took < Duration::from_secs(8 + 5), "took {took:?}");
    assert!(took >= Duration::from_secs(7), "took {took:?}");
    let last = run.stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!(
            "rancher.secret_key_file {} did not appear within",
            bed.secret_file().display()
        )),
        "{}",
        run.stderr
    );
    assert!(bed.rancher.requests().is_empty(), "Rancher never asked");
    // Paged with the rest of a failed boot, naming the key it waited for.
    let key = format!("drover-boot-{}", bed.instance_id);
    let page = bed
        .pager
        .events()
        .into_iter()
        .find(|e| e["event_action"] == "trigger" && e["dedup_key"] == key.as_str())
        .unwrap_or_else(|| panic!("a boot page: {:?}", bed.pager.events()));
    let summary = page["payload"]["summary"].as_str().unwrap_or_default();
    assert!(summary.contains("rancher.secret_key_file"), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotated_while_drover_runs_still_takes_the_host_out() {
    let mut bed = bed_with_ssm(DockerMode::Running).await;
    bed.config.lifecycle.imds_poll = Some(Duration::ZERO);
    bed.config.lifecycle.on_sigterm = Some(OnSigterm::Deregister);
    let host_id = bed.register().await;
    let mut run = bed.spawn(&["run"]);
    run.wait_ready(LONG).await.expect("drover run ready");

    // The API key's secret rotated: in Rancher first, then in the parameter.
    const ROTATED: &str = "r0tat3d-DroverTestSecretKey-1a2b3c";
    bed.rancher.set_secret_key(ROTATED);
    bed.moto().put_secure_parameter(PARAMETER, ROTATED).await;

    // Taking the host out at the stop meets a 401 with the old key, reads the parameter
    // again and goes on with the new one.
    run.signal(nix::sys::signal::Signal::SIGTERM)
        .expect("SIGTERM");
    let code = run.wait(LONG).await.expect("drover run stops");
    let output = run.output();
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(
        bed.rancher.host(&host_id).expect("host").state,
        "purged",
        "{output}"
    );
    assert!(
        output.contains(&format!(
            "rancher.secret_key_ssm {PARAMETER} holds another one now"
        )),
        "{output}"
    );
    assert_no_secret(&bed, &[SECRET, ROTATED], &[("run", output)]);
}

/// The routing key in SSM is read when the first page goes out: a failed take-out pages
/// PagerDuty with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_reads_the_routing_key_from_ssm() {
    let mut bed = bed_with_ssm(DockerMode::Running).await;
    bed.moto()
        .put_secure_parameter(ROUTING_PARAMETER, &format!("{ROUTING_KEY}\n"))
        .await;
    bed.config.pager.routing_key = Some(Secret::Ssm(ROUTING_PARAMETER.into()));
    bed.config.lifecycle.drain_timeout = Some(Duration::from_secs(3));
    let host_id = bed.register().await;
    bed.rancher.stick(&host_id, "deactivating");
    let run = bed.drover(&["deregister"]).await;
    run.assert_code(1);
    let events = bed.pager.events();
    assert_eq!(events.len(), 1, "{}", run.stderr);
    assert_eq!(events[0]["routing_key"], ROUTING_KEY, "trimmed, as put");
    assert_eq!(events[0]["event_action"], "trigger");
    assert_no_secret(&bed, &[SECRET, ROUTING_KEY], &[("deregister", run.all())]);
}
