//! Taking a host out, as named steps in one place: evacuate (when planned), deactivate,
//! remove, purge, then stop the local agent (for this instance's own host). Each step is the
//! backend's to carry out and skips what is done already; this module decides the order,
//! what counts as out, and reports what happened. An evacuation ends only once the host's
//! containers are gone, within the take-out's deadline; one that does not is a failed step,
//! and nothing after it is tried, so a host is never removed with its containers on it.

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
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::cluster::{AgentRegistration, ClusterError, ClusterHost, EnvHost, StepFailed};

    /// A cluster whose evacuation takes `evacuation` (its containers going) and whose
    /// other steps are instant; it notes the steps taken, in order.
    struct Evacuating {
        evacuation: Duration,
        steps: Mutex<Vec<Step>>,
    }

    impl Evacuating {
        fn new(evacuation: Duration) -> Evacuating {
            Evacuating {
                evacuation,
                steps: Mutex::new(Vec::new()),
            }
        }

        fn steps(&self) -> Vec<Step> {
            self.steps.lock().map(|s| s.clone()).unwrap_or_default()
        }
    }

    impl Cluster for Evacuating {
        fn describe(&self) -> String {
            "a cluster evacuating slowly".into()
        }

        async fn hosts(&self, _deadline: Instant) -> Result<Vec<EnvHost>, ClusterError> {
            Ok(Vec::new())
        }

        async fn find_hosts(
            &self,
            _instance_id: &str,
            _deadline: Instant,
        ) -> Result<Vec<ClusterHost>, ClusterError> {
            Ok(Vec::new())
        }

        async fn host(
            &self,
            _host_id: &str,
            _deadline: Instant,
        ) -> Result<Option<ClusterHost>, ClusterError> {
            Ok(None)
        }

        async fn registration(
            &self,
            _deadline: Instant,
        ) -> Result<AgentRegistration, ClusterError> {
            Err(ClusterError::OutOfTime("not in these tests".into()))
        }

        async fn take_step(
            &self,
            _host_id: &str,
            step: Step,
            deadline: Instant,
        ) -> Result<StepDone, StepFailed> {
            if let Ok(mut s) = self.steps.lock() {
                s.push(step);
            }
            let state = match step {
                Step::Evacuate => {
                    if Instant::now() + self.evacuation > deadline {
                        tokio::time::sleep_until(deadline).await;
                        return Err(StepFailed {
                            state: "inactive".into(),
                            error: "lifecycle.drain_timeout ran out evacuating host 1h1".into(),
                            events: Vec::new(),
                        });
                    }
                    tokio::time::sleep(self.evacuation).await;
                    "inactive"
                }
                Step::Deactivate => "inactive",
                Step::Remove => "removed",
                Step::Purge => "purged",
            };
            Ok(StepDone {
                state: state.into(),
                events: Vec::new(),
            })
        }
    }

    struct Agent(Mutex<usize>);

    impl LocalAgent for Agent {
        async fn stop(&self) -> Result<bool, String> {
            if let Ok(mut n) = self.0.lock() {
                *n += 1;
            }
            Ok(true)
        }
    }

    const EVACUATE_AND_STOP: Plan = Plan {
        evacuate: true,
        stop_agent: true,
    };

    #[tokio::test(start_paused = true)]
    async fn the_host_is_removed_once_its_evacuation_has_finished() {
        let cluster = Evacuating::new(Duration::from_secs(90));
        let agent = Agent(Mutex::new(0));
        let deadline = Instant::now() + Duration::from_secs(600);
        let report = take_out(&cluster, &agent, "1h1", EVACUATE_AND_STOP, deadline).await;
        assert_eq!(
            report.ending,
            Ending::Out {
                state: "purged".into()
            }
        );
        assert_eq!(cluster.steps(), EVACUATE_AND_STOP.steps());
        assert_eq!(agent.0.lock().map(|n| *n).unwrap_or_default(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_evacuation_past_the_budget_fails_the_take_out_with_the_host_kept() {
        let cluster = Evacuating::new(Duration::from_secs(900));
        let agent = Agent(Mutex::new(0));
        let deadline = Instant::now() + Duration::from_secs(600);
        let report = take_out(&cluster, &agent, "1h1", EVACUATE_AND_STOP, deadline).await;
        match &report.ending {
            Ending::Failed { step, state, error } => {
                assert_eq!((*step, state.as_str()), (Step::Evacuate, "inactive"));
                assert!(error.contains("drain_timeout"), "{error}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cluster.steps(), [Step::Evacuate], "never removed");
        assert_eq!(
            report.agent, None,
            "the agent keeps running with the host in"
        );
        assert_eq!(agent.0.lock().map(|n| *n).unwrap_or_default(), 0);
    }

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
