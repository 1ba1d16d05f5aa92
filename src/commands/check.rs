//! `drover check`: one line per dependency the config names, every check bounded.

use std::time::Duration;

use super::CommandError;
use crate::autoscaling::AutoScaling;
use crate::config::Config;
use crate::docker::{AgentDocker, Settings as DockerSettings};
use crate::imds::{Imds, InstanceIdentity};
use crate::lifecycle::{
    LaunchHook, LifecycleActions, LAUNCHING_TRANSITION, TERMINATING_TRANSITION,
};
use crate::pager::webhook_origin;
use crate::rancher::{RancherClient, RancherError};
use crate::sqs::Sqs;

/// One line of `drover check`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Mark {
    Ok,
    Fail,
    Skip,
    Warn,
}

impl Mark {
    fn label(&self) -> &'static str {
        match self {
            Mark::Ok => "ok",
            Mark::Fail => "FAIL",
            Mark::Skip => "skip",
            Mark::Warn => "warn",
        }
    }
}

fn line(mark: Mark, name: &str, detail: impl std::fmt::Display) -> Mark {
    println!("{:<5} {:<12} {}", mark.label(), name, detail);
    mark
}

const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

async fn bounded<T>(fut: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(CHECK_TIMEOUT, fut).await.ok()
}

/// `drover check`: one line per dependency; fails when any check fails.
pub async fn check(config: &Config) -> Result<(), CommandError> {
    let mut marks = vec![line(
        Mark::Ok,
        "config",
        format!("{} is valid", config.path.display()),
    )];

    let imds = Imds::from_env();
    let identity = match bounded(imds.identity(Duration::from_secs(10))).await {
        Some(Ok(id)) => {
            marks.push(line(
                Mark::Ok,
                "imds",
                format!(
                    "{} ({}, {}), target lifecycle state {}",
                    id.instance_id,
                    id.instance_type,
                    id.availability_zone,
                    id.target_lifecycle_state
                        .as_deref()
                        .unwrap_or("not set yet")
                ),
            ));
            Some(id)
        }
        Some(Err(e)) => {
            marks.push(line(Mark::Fail, "imds", e));
            None
        }
        None => {
            marks.push(line(Mark::Fail, "imds", "no answer within 15s"));
            None
        }
    };

    marks.push(
        match bounded(AgentDocker::probe(&DockerSettings::from_env())).await {
            Some(Ok((d, version))) => {
                line(Mark::Ok, "docker", format!("{} at {}", version, d.host()))
            }
            Some(Err(e)) => line(Mark::Fail, "docker", e),
            None => line(Mark::Fail, "docker", "no answer within 15s"),
        },
    );

    let rancher = async {
        let client = RancherClient::connect(&config.rancher).await?;
        let project = client.project().await?;
        Ok::<_, RancherError>((client.api(), project))
    };
    marks.push(match bounded(rancher).await {
        Some(Ok((api, project))) => line(
            Mark::Ok,
            "rancher",
            format!(
                "{} API {}, key works in project {} ({})",
                config.rancher.url,
                api.path(),
                project.id,
                project.name.as_deref().unwrap_or("unnamed")
            ),
        ),
        Some(Err(e)) => line(Mark::Fail, "rancher", e),
        None => line(Mark::Fail, "rancher", "no answer within 15s"),
    });

    let region = identity
        .as_ref()
        .map(|i| i.region.clone())
        .unwrap_or_default();
    let sdk = crate::aws::sdk_config(&region).await;

    marks.push(match &config.lifecycle.queue_url {
        None => line(Mark::Skip, "sqs", "lifecycle.queue_url not set"),
        Some(url) => match bounded(Sqs::new(&sdk).queue_depth(url)).await {
            Some(Ok(depth)) => line(
                Mark::Ok,
                "sqs",
                format!("{url} readable, about {depth} message(s) waiting"),
            ),
            Some(Err(e)) => line(Mark::Fail, "sqs", e),
            None => line(Mark::Fail, "sqs", "no answer within 15s"),
        },
    });

    marks.push(match &identity {
        None => line(Mark::Fail, "autoscaling", "needs the instance id from IMDS"),
        Some(id) => check_autoscaling(config, &sdk, id).await,
    });

    let pager = &config.pager;
    marks.push(match (&pager.pagerduty_routing_key, &pager.webhook_url) {
        (None, None) => line(
            Mark::Warn,
            "pager",
            "no pager configured: failures will only be logged",
        ),
        (key, hook) => line(
            Mark::Ok,
            "pager",
            format!(
                "PagerDuty {}; webhook {}",
                if key.is_some() {
                    format!("routing key set, events to {}", pager.pagerduty_url)
                } else {
                    "not set".into()
                },
                hook.as_ref()
                    .map(|u| format!("to {}", webhook_origin(u)))
                    .unwrap_or_else(|| "not set".into())
            ),
        ),
    });

    let failed = marks.iter().filter(|m| **m == Mark::Fail).count();
    if failed > 0 {
        Err(CommandError::ChecksFailed(failed))
    } else {
        Ok(())
    }
}

async fn check_autoscaling(
    config: &Config,
    sdk: &aws_config::SdkConfig,
    identity: &InstanceIdentity,
) -> Mark {
    let asg = AutoScaling::new(sdk);
    let membership = match bounded(asg.membership(&identity.instance_id)).await {
        Some(Ok(m)) => m,
        Some(Err(e)) => return line(Mark::Fail, "autoscaling", e),
        None => return line(Mark::Fail, "autoscaling", "no answer within 15s"),
    };
    let Some(m) = membership else {
        return line(
            Mark::Ok,
            "autoscaling",
            format!(
                "DescribeAutoScalingInstances allowed; {} is in no group",
                identity.instance_id
            ),
        );
    };
    let hooks = match bounded(asg.hooks(&m.group)).await {
        Some(Ok(h)) => h,
        Some(Err(e)) => return line(Mark::Fail, "autoscaling", e),
        None => return line(Mark::Fail, "autoscaling", "no answer within 15s"),
    };
    let terminating: Vec<_> = hooks
        .iter()
        .filter(|h| h.transition == TERMINATING_TRANSITION)
        .collect();
    let wanted = config.lifecycle.hook_name.as_deref();
    let chosen = match wanted {
        Some(name) => terminating.iter().find(|h| h.name == name),
        None => terminating.first(),
    };
    // The launching hook drover would complete once the host is active.
    let launching = hooks
        .iter()
        .filter(|h| h.transition == LAUNCHING_TRANSITION);
    let launch = match &config.lifecycle.launch_hook {
        LaunchHook::Off => Ok("launching hook: none (lifecycle.launch_hook_name)".to_string()),
        LaunchHook::FromGroup => Ok(match launching.clone().next() {
            Some(h) => format!(
                "launching hook {:?} (heartbeat timeout {}s) completed once the host is active",
                h.name,
                h.heartbeat_timeout_secs.unwrap_or(3600)
            ),
            None => "no launching hook".to_string(),
        }),
        LaunchHook::Named(name) => match launching.clone().find(|h| &h.name == name) {
            Some(h) => Ok(format!(
                "launching hook {:?} (heartbeat timeout {}s) completed once the host is active",
                h.name,
                h.heartbeat_timeout_secs.unwrap_or(3600)
            )),
            None => Err(format!(
                "group {} has no launching hook named {name:?} (lifecycle.launch_hook_name)",
                m.group
            )),
        },
    };
    let launch = match launch {
        Ok(text) => text,
        Err(e) => return line(Mark::Fail, "autoscaling", e),
    };
    match (chosen, wanted) {
        (Some(h), _) => line(
            Mark::Ok,
            "autoscaling",
            format!(
                "group {} ({}), termination hook {:?} with heartbeat timeout {}s; {launch}",
                m.group,
                m.lifecycle_state.as_deref().unwrap_or("?"),
                h.name,
                h.heartbeat_timeout_secs.unwrap_or(3600)
            ),
        ),
        (None, Some(name)) => line(
            Mark::Fail,
            "autoscaling",
            format!(
                "group {} has no termination hook named {name:?} (lifecycle.hook_name)",
                m.group
            ),
        ),
        (None, None) => line(
            Mark::Warn,
            "autoscaling",
            format!(
                "group {} has no EC2_INSTANCE_TERMINATING hook: Auto Scaling will not wait for drover",
                m.group
            ),
        ),
    }
}
