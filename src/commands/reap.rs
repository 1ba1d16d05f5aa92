//! `drover reap`: one reaper sweep through the workflow's door, as `drover run` makes on its
//! own schedule, and a line on stdout for every host it considered and what it did.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cluster::LazyRancher;
use super::{build_reaper, build_workflow, CommandError};
use crate::autoscaling::AutoScaling;
use crate::config::Config;
use crate::imds::Imds;
use crate::metrics::Metrics;
use crate::sources::reaper::{Decision, HostVerdict, ResumedVerdict, SweepReport, WarmVerdict};

/// `drover reap [--dry-run]`: sweep once, print, exit 1 when refused or a take-out failed.
pub async fn reap(config: Arc<Config>, dry_run: bool) -> Result<(), CommandError> {
    let identity = Imds::from_env().identity(Duration::from_secs(60)).await?;
    let sdk = crate::aws::sdk_config(&identity.region).await;
    let cluster = LazyRancher::new(config.clone());
    let asg = AutoScaling::new(&sdk);
    let workflow = build_workflow(
        &config,
        &identity,
        cluster.clone(),
        asg.clone(),
        &Metrics::off(),
    )?;
    let reaper = build_reaper(&config, &identity, cluster, asg, dry_run, &Metrics::off())?;

    let stop = CancellationToken::new();
    let intake = stop.child_token();
    let tracker = TaskTracker::new();
    let door = workflow.start(intake.clone(), stop.clone(), &tracker);
    let report = reaper.sweep(&door, &intake).await;
    drop(door);
    intake.cancel();
    tracker.close();
    tracker.wait().await;

    for line in lines(&report) {
        println!("{line}");
    }
    if let Some(why) = report.refused {
        return Err(CommandError::Reap(format!("sweep refused: {why}")));
    }
    if !report.succeeded() {
        return Err(CommandError::Reap(
            "a take-out failed or a lifecycle action could not be completed (see above)".into(),
        ));
    }
    Ok(())
}

/// The lines `drover reap` prints: one per host of the listing, one per instance of the
/// warm pool, one per unfinished take-out of an earlier sweep it finished, then what was
/// paged. None for a refused sweep: it considered no host, and
/// the error (on stderr) says why, once.
fn lines(report: &SweepReport) -> Vec<String> {
    if report.refused.is_some() {
        return Vec::new();
    }
    let mut out: Vec<String> = report.hosts.iter().map(host_line).collect();
    out.extend(report.warm.iter().map(warm_line));
    out.extend(report.resumed.iter().map(resumed_line));
    if let Some(e) = &report.warm_error {
        out.push(format!("warm-pool: not read ({e})"));
    }
    if report.paged {
        out.push("paged: more candidates than reaper.max_per_sweep".into());
    }
    out
}

/// `WORD HOST INSTANCE agent A; Auto Scaling's answer; why`.
fn host_line(h: &HostVerdict) -> String {
    let mut evidence = format!("agent {}", h.agent);
    if let Some(asg) = &h.autoscaling {
        evidence.push_str("; ");
        evidence.push_str(asg);
    }
    if let Some(why) = reason(&h.decision) {
        evidence.push_str(": ");
        evidence.push_str(&why);
    }
    format!(
        "{:<14} {:<8} {:<21} {evidence}",
        h.decision.word(false),
        h.host_id,
        h.instance_id.as_deref().unwrap_or("-")
    )
}

fn warm_line(w: &WarmVerdict) -> String {
    let mut evidence = format!("warm pool, {}", w.state);
    if let Some(why) = reason(&w.decision) {
        evidence.push_str(": ");
        evidence.push_str(&why);
    }
    format!(
        "{:<14} {:<8} {:<21} {evidence}",
        w.decision.word(true),
        "-",
        w.instance_id
    )
}

/// `WORD HOST INSTANCE not listed: ...`: the take-out an earlier sweep began, finished now.
fn resumed_line(r: &ResumedVerdict) -> String {
    let mut evidence = format!(
        "not listed: an earlier sweep's take-out, begun {}, unfinished",
        r.started_at
    );
    if let Some(why) = reason(&r.decision) {
        evidence.push_str(": ");
        evidence.push_str(&why);
    }
    format!(
        "{:<14} {:<8} {:<21} {evidence}",
        r.decision.word(false),
        r.hosts.first().map_or("-", String::as_str),
        r.instance_id
    )
}

/// The why of a decision that has one.
fn reason(d: &Decision) -> Option<String> {
    match d {
        Decision::Leave(why) => Some(why.clone()),
        Decision::Failed(why) => Some(why.clone()),
        Decision::Deferred => Some("more candidates than reaper.max_per_sweep".into()),
        Decision::NotConfirmed => Some("Auto Scaling no longer confirmed it".into()),
        Decision::Interrupted => Some("interrupted".into()),
        Decision::Reap | Decision::WouldReap | Decision::Reaped => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::AgentContact;

    #[test]
    fn a_line_per_host_and_warmed_instance_with_the_evidence() {
        let report = SweepReport {
            hosts: vec![
                HostVerdict {
                    host_id: "1h2".into(),
                    instance_id: Some("i-0123456789abcdef0".into()),
                    group: Some("crawlers".into()),
                    agent: AgentContact::Disconnected,
                    autoscaling: Some("not known to Auto Scaling".into()),
                    decision: Decision::Reaped,
                },
                HostVerdict {
                    host_id: "1h3".into(),
                    instance_id: None,
                    group: None,
                    agent: AgentContact::Disconnected,
                    autoscaling: None,
                    decision: Decision::Leave("no aws.instance_id label".into()),
                },
            ],
            warm: vec![WarmVerdict {
                instance_id: "i-0fedcba9876543210".into(),
                state: "Warmed:Terminating:Wait".into(),
                decision: Decision::WouldReap,
            }],
            resumed: vec![ResumedVerdict {
                instance_id: "i-0aaaabbbbccccdddd".into(),
                hosts: vec!["1h9".into()],
                group: Some("crawlers".into()),
                started_at: "2026-12-02T20:00:00Z".into(),
                decision: Decision::Reaped,
            }],
            ..SweepReport::default()
        };
        assert_eq!(
            lines(&report),
            [
                "reaped         1h2      i-0123456789abcdef0   agent disconnected; not known to Auto Scaling",
                "left           1h3      -                     agent disconnected: no aws.instance_id label",
                "would-complete -        i-0fedcba9876543210   warm pool, Warmed:Terminating:Wait",
                "reaped         1h9      i-0aaaabbbbccccdddd   not listed: an earlier sweep's take-out, begun 2026-12-02T20:00:00Z, unfinished",
            ]
        );
        let refused = SweepReport {
            refused: Some("Auto Scaling does not know this instance".into()),
            ..SweepReport::default()
        };
        assert!(lines(&refused).is_empty());
    }
}
