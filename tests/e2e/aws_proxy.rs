//! Every AWS call of the process goes through one HTTPS client, built by drover (src/aws.rs)
//! rather than by each SDK client: it must still honour `HTTP_PROXY`/`HTTPS_PROXY` and
//! `NO_PROXY` as the SDK's own default does, for hosts that reach AWS only through a proxy.

use testbed::bed::{Bed, BedOptions, ROUTING_KEY};
use testbed::config::Secret;
use testbed::proxy::ForwardProxy;

const PARAMETER: &str = "/drover/prod/rancher-secret-key";

/// `host:port` of a stand-in's `http://host:port` URL.
fn authority(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

/// A bed with a queue, the Rancher key in SSM and a termination hook: `check` then asks
/// SSM, SQS and Auto Scaling.
async fn bed_asking_every_aws_service() -> Bed {
    let mut bed = Bed::with(BedOptions {
        queue: true,
        ..BedOptions::default()
    })
    .await;
    std::fs::remove_file(bed.secret_file()).expect("the bed's secret file");
    bed.moto()
        .put_secure_parameter(PARAMETER, testbed::bed::SECRET)
        .await;
    bed.config.rancher.secret_key = Some(Secret::Ssm(PARAMETER.into()));
    bed.config.pager.routing_key = Some(Secret::Inline(ROUTING_KEY.into()));
    bed.config.lifecycle.hook_name = Some(testbed::bed::HOOK.into());
    bed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_calls_go_through_the_proxy_the_environment_names() {
    let mut bed = bed_asking_every_aws_service().await;
    let proxy = ForwardProxy::start().await.expect("the forward proxy");
    bed.extra_env.push(("HTTP_PROXY".into(), proxy.url()));
    let run = bed.drover(&["check"]).await;
    run.assert_code(0);
    let seen = proxy.authorities();
    let moto = authority(&bed.moto().url());
    let asg = authority(&bed.asg.url());
    // SSM and SQS are both moto here; Auto Scaling is the stand-in.
    let through_moto = seen.iter().filter(|a| **a == moto).count();
    assert!(
        through_moto >= 2,
        "SSM and SQS calls not through the proxy: {seen:?}"
    );
    assert!(
        seen.contains(&asg),
        "no Auto Scaling call through the proxy: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_proxy_keeps_aws_calls_direct() {
    let mut bed = bed_asking_every_aws_service().await;
    let proxy = ForwardProxy::start().await.expect("the forward proxy");
    bed.extra_env.push(("HTTP_PROXY".into(), proxy.url()));
    bed.extra_env.push(("NO_PROXY".into(), "127.0.0.1".into()));
    let run = bed.drover(&["check"]).await;
    run.assert_code(0);
    let seen = proxy.authorities();
    assert!(
        seen.is_empty(),
        "went through the proxy despite NO_PROXY: {seen:?}"
    );
}
