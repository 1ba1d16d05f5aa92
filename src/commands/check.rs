//! `drover check`: one line per dependency the config names, every check bounded.

use std::path::Path;
use std::time::Duration;

use secrecy::SecretString;
use tokio::time::Instant;

use super::CommandError;
use crate::autoscaling::AutoScaling;
use crate::config::Config;
use crate::docker::{AgentDocker, Settings as DockerSettings};
use crate::imds::{Imds, InstanceIdentity};
use crate::lifecycle::{
    LaunchHook, LifecycleActions, LAUNCHING_TRANSITION, TERMINATING_TRANSITION,
};
use crate::pager::{routing_key_is_valid, webhook_origin, WebhookEvents, ROUTING_KEY_SHAPE};
use crate::rancher::{RancherClient, RancherError};
use crate::secret::{Secret, SecretReader};
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
/// How long a check waits for a secret: a file not there yet, SSM retried.
const SECRET_BUDGET: Duration = Duration::from_secs(5);

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
    // Findings that do not stop drover (plain http, peers' messages handed back, a secret
    // file open to others): shown here, never counted as failures.
    for warning in &config.warnings {
        marks.push(line(Mark::Warn, "config", warning));
    }

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

    let reader = super::rancher_key_reader(config);
    let key = read_secret(&reader).await;
    marks.push(match &key {
        Ok(_) => line(Mark::Ok, "rancher-key", read_from(reader.secret())),
        Err(e) => line(Mark::Fail, "rancher-key", e),
    });
    marks.push(match key {
        Err(_) => line(
            Mark::Fail,
            "rancher",
            "needs the secret key (see rancher-key)",
        ),
        Ok(key) => check_rancher(config, key).await,
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
    marks.push(check_reaper(config, &sdk, identity.as_ref()).await);

    let pager = &config.pager;
    marks.push(match &pager.pagerduty_routing_key {
        None => line(Mark::Skip, "pager-key", "no PagerDuty routing key set"),
        Some(secret) => {
            let reader = SecretReader::new(
                secret.clone(),
                pager.parameter_store.as_ref().map(|s| s.0.clone()),
            );
            match read_secret(&reader).await {
                Ok(key) if routing_key_is_valid(&key) => {
                    line(Mark::Ok, "pager-key", read_from(secret))
                }
                Ok(_) => line(
                    Mark::Fail,
                    "pager-key",
                    format!("{secret} {ROUTING_KEY_SHAPE}"),
                ),
                Err(e) => line(Mark::Fail, "pager-key", e),
            }
        }
    });
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
                    .map(|u| format!(
                        "to {} ({})",
                        webhook_origin(u),
                        match pager.webhook_events {
                            WebhookEvents::Failures => "failures",
                            WebhookEvents::All => "failures and every take-out",
                        }
                    ))
                    .unwrap_or_else(|| "not set".into())
            ),
        ),
    });

    marks.push(check_metrics(config.metrics.textfile.as_deref()));

    let failed = marks.iter().filter(|m| **m == Mark::Fail).count();
    if failed > 0 {
        Err(CommandError::ChecksFailed(failed))
    } else {
        Ok(())
    }
}

/// The textfile's directory: there and writable, or not there yet (a warning: node_exporter
/// may be installed later, and drover writes the file once the directory exists). A file
/// is created there and removed again; the textfile itself is left alone.
fn check_metrics(textfile: Option<&Path>) -> Mark {
    let Some(path) = textfile else {
        return line(Mark::Skip, "metrics", "metrics.textfile not set");
    };
    let dir = path.parent().unwrap_or(Path::new("/"));
    if path.is_dir() {
        return line(
            Mark::Fail,
            "metrics",
            format!("metrics.textfile {} is a directory", path.display()),
        );
    }
    if !dir.is_dir() {
        return line(
            Mark::Warn,
            "metrics",
            format!(
                "{} does not exist (yet): drover run writes {} once it does",
                dir.display(),
                path.display()
            ),
        );
    }
    let probe = dir.join(format!(".drover-check.{}.tmp", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            line(
                Mark::Ok,
                "metrics",
                format!(
                    "{} writable; drover run writes {}",
                    dir.display(),
                    path.display()
                ),
            )
        }
        Err(e) => line(
            Mark::Fail,
            "metrics",
            format!("cannot write in {} (metrics.textfile): {e}", dir.display()),
        ),
    }
}

/// Where a secret that could be read comes from; never its value.
fn read_from(secret: &Secret) -> String {
    format!("from {} ({}), read", secret.describe(), secret.key())
}

/// Reads a secret as drover would, briefly: the value, or why not in one line.
async fn read_secret(reader: &SecretReader) -> Result<SecretString, String> {
    match bounded(reader.read(Instant::now() + SECRET_BUDGET)).await {
        Some(Ok(value)) => Ok(value),
        Some(Err(e)) => Err(e.to_string()),
        None => Err(format!("{}: no answer within 15s", reader.secret())),
    }
}

/// The server, the API version, and the project the key works in.
async fn check_rancher(config: &Config, key: SecretString) -> Mark {
    let rancher = async {
        let client = RancherClient::connect(&config.rancher, key).await?;
        let project = client.project().await?;
        Ok::<_, RancherError>((client.api(), project))
    };
    match bounded(rancher).await {
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
    }
}

/// The reaper's settings, and the warm-pool call its sweeps make on this instance's group.
async fn check_reaper(
    config: &Config,
    sdk: &aws_config::SdkConfig,
    identity: Option<&InstanceIdentity>,
) -> Mark {
    let r = &config.reaper;
    let settings = format!(
        "sweeps the environment about every {} across the fleet, at most {} take-out(s) a sweep{}",
        humantime::format_duration(r.interval),
        r.max_per_sweep,
        if r.dry_run { ", dry run" } else { "" }
    );
    if !r.enabled {
        return line(
            Mark::Skip,
            "reaper",
            "reaper.enabled is false: drover run does not sweep (drover reap still does)",
        );
    }
    let Some(id) = identity else {
        return line(Mark::Fail, "reaper", "needs the instance id from IMDS");
    };
    let asg = AutoScaling::new(sdk);
    let group = match bounded(asg.membership(&id.instance_id)).await {
        Some(Ok(Some(m))) => m.group,
        Some(Ok(None)) => {
            return line(
                Mark::Fail,
                "reaper",
                format!(
                    "Auto Scaling does not know {}: every sweep would be refused",
                    id.instance_id
                ),
            )
        }
        Some(Err(e)) => return line(Mark::Fail, "reaper", e),
        None => return line(Mark::Fail, "reaper", "no answer within 15s"),
    };
    match bounded(asg.warm_pool(&group)).await {
        Some(Ok(pool)) => line(
            Mark::Ok,
            "reaper",
            format!(
                "{settings}; DescribeWarmPool allowed ({} warmed instance(s) in group {group})",
                pool.len()
            ),
        ),
        Some(Err(e)) => line(
            Mark::Fail,
            "reaper",
            format!("{e} (the instance role needs autoscaling:DescribeWarmPool)"),
        ),
        None => line(Mark::Fail, "reaper", "no answer within 15s"),
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
