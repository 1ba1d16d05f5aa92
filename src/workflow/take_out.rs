//! Taking a host out, as named steps in one place: evacuate (when planned), deactivate,
//! remove, purge, then stop the local agent (for this instance's own host). Each step is the
//! backend's to carry out and skips what is done already; this module decides the order,
//! what counts as out, and reports what happened.

use tokio::time::Instant;

use crate::cluster::{Cluster, LocalAgent, Step, StepDone, StepEvent, GONE};

/// How to take a host out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Evacuate its containers first.
    pub evacuate: bool,
    /// Stop the local agent once the host is out: it is this instance's own host, and its
    /// agent would keep reconnecting it.
    pub stop_agent: bool,
}

impl Plan {
    /// The cluster steps, in order.
    pub fn steps(self) -> Vec<Step> {
        let mut steps = Vec::with_capacity(4);
        if self.evacuate {
            steps.push(Step::Evacuate);
        }
        steps.extend([Step::Deactivate, Step::Remove, Step::Purge]);
        steps
    }
}

/// How a take-out ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// The host is out: `purged`; `removed` or `purging` when the purge did not finish (the
    /// server purges removed hosts on its own); [`GONE`] when the server no longer knows it.
    Out { state: String },
    /// A step failed with the host still in the environment.
    Failed {
        step: Step,
        state: String,
        error: String,
    },
}

/// What a take-out did, for the timeline: every event of every step, in order, and a few
/// words of drover's own where a rule decided something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub ending: Ending,
    pub events: Vec<Said>,
    /// What stopping the local agent did, once the host was out.
    pub agent: Option<String>,
}

/// One line of the report, when it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Said {
    pub at: std::time::SystemTime,
    pub text: String,
}

impl Report {
    pub fn is_out(&self) -> bool {
        matches!(self.ending, Ending::Out { .. })
    }
}

fn said(events: &mut Vec<Said>, step_events: Vec<StepEvent>) {
    events.extend(step_events.into_iter().map(|e| Said {
        at: e.at,
        text: e.what.to_string(),
    }));
}

fn note(events: &mut Vec<Said>, text: String) {
    events.push(Said {
        at: std::time::SystemTime::now(),
        text,
    });
}

/// Takes `host_id` out through the plan's steps before `deadline`: the cluster's, then the
/// local agent's when the plan says so and the host is out.
///
/// Out is out: a host the server no longer knows ends the take-out at once, and a host that
/// reached `removed` has left the environment (it drops out of every list and the server
/// purges it on its own some minutes later), so a purge that fails or runs out of time leaves
/// the take-out done, not failed.
pub async fn take_out<C: Cluster, A: LocalAgent>(
    cluster: &C,
    agent: &A,
    host_id: &str,
    plan: Plan,
    deadline: Instant,
) -> Report {
    let mut report = cluster_steps(cluster, host_id, plan, deadline).await;
    if plan.stop_agent && report.is_out() {
        report.agent = stop_agent(agent).await;
    }
    report
}

async fn cluster_steps<C: Cluster>(
    cluster: &C,
    host_id: &str,
    plan: Plan,
    deadline: Instant,
) -> Report {
    let mut events = Vec::new();
    let mut last = String::from("unknown");
    for step in plan.steps() {
        match cluster.take_step(host_id, step, deadline).await {
            Ok(StepDone { state, events: e }) => {
                said(&mut events, e);
                if state == GONE {
                    return Report {
                        ending: Ending::Out { state },
                        events,
                        agent: None,
                    };
                }
                last = state;
            }
            Err(failed) => {
                said(&mut events, failed.events);
                if step == Step::Purge {
                    note(
                        &mut events,
                        format!(
                            "host {}; purge not finished ({}), Rancher purges removed hosts on its own",
                            failed.state, failed.error
                        ),
                    );
                    return Report {
                        ending: Ending::Out {
                            state: failed.state,
                        },
                        events,
                        agent: None,
                    };
                }
                return Report {
                    ending: Ending::Failed {
                        step,
                        state: failed.state,
                        error: failed.error,
                    },
                    events,
                    agent: None,
                };
            }
        }
    }
    Report {
        ending: Ending::Out { state: last },
        events,
        agent: None,
    }
}

/// The last step, for this instance's own host once it is out: stop the local agent so
/// that it stops reconnecting. A failure is reported, never fatal: the host is out.
pub async fn stop_agent<A: LocalAgent>(agent: &A) -> Option<String> {
    match agent.stop().await {
        Ok(true) => Some("stopped the local rancher-agent container".into()),
        Ok(false) => None,
        Err(e) => Some(format!("cannot stop rancher-agent: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_steps_come_in_order_and_evacuation_only_when_planned() {
        let plan = |evacuate| Plan {
            evacuate,
            stop_agent: false,
        };
        assert_eq!(
            plan(false).steps(),
            [Step::Deactivate, Step::Remove, Step::Purge]
        );
        assert_eq!(
            plan(true).steps(),
            [Step::Evacuate, Step::Deactivate, Step::Remove, Step::Purge]
        );
    }
}
