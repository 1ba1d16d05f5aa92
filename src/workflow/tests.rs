//! The workflow's decision table, over in-memory fakes of the cluster, Auto Scaling, the
//! local agent and the pager, in paused time. Each case checks what its rule promises and
//! fails when the rule is broken.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Settings, Workflow};
use crate::cluster::{
    AgentContact, AgentRegistration, Cluster, ClusterError, ClusterHost, EnvHost, Happened,
    LocalAgent, Step, StepDone, StepEvent, StepFailed, GONE,
};
use crate::lifecycle::{
    ActionRef, CallFailure, GroupMembership, LaunchHook, LifecycleActions, LifecycleHook,
    LifecycleResult, WarmedInstance, LAUNCHING_TRANSITION, TERMINATING_TRANSITION,
};
use crate::metrics::Metrics;
use crate::pager::{Incident, IncidentKind, PagerError, Paging, Report};
use crate::state::{record_file, Records, StateDir, TakeOutRecord};
use crate::work::{Join, JoinFailed, Joined, LaunchOutcome, Outcome, Source, Termination, Work};

const OWN: &str = "i-0000000000000000a";
const PEER: &str = "i-0000000000000000b";
const STRANGER: &str = "i-0000000000000000c";
const GROUP: &str = "crawlers";
const HOOK: &str = "drain";
const OWN_HOST: &str = "1h1";
const PEER_HOST: &str = "1h2";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- The cluster ----

#[derive(Default)]
struct ClusterState {
    /// Host id -> (instance, state).
    hosts: BTreeMap<String, (String, String)>,
    /// Steps that fail, with the error, for as long as they are listed.
    failing: HashMap<Step, String>,
    find_fails: bool,
    /// How long each step takes.
    step_time: Duration,
    /// How long an evacuation takes, when longer than `step_time`: its containers going.
    evacuation_time: Duration,
    steps: Vec<(String, Step)>,
    /// Host listings asked for.
    listings: usize,
}

/// Hosts move through Rancher's states as the steps take them; a step past its end does
/// nothing.
#[derive(Clone, Default)]
struct FakeCluster(Arc<Mutex<ClusterState>>);

fn how_far_out(state: &str) -> u8 {
    match state {
        "inactive" => 1,
        "removed" => 2,
        "purged" => 3,
        _ => 0,
    }
}

impl FakeCluster {
    fn add(&self, host: &str, instance: &str) {
        lock(&self.0)
            .hosts
            .insert(host.into(), (instance.into(), "active".into()));
    }

    fn state(&self, host: &str) -> Option<String> {
        lock(&self.0).hosts.get(host).map(|(_, s)| s.clone())
    }

    fn steps(&self) -> Vec<(String, Step)> {
        lock(&self.0).steps.clone()
    }

    fn fail(&self, step: Step, error: &str) {
        lock(&self.0).failing.insert(step, error.into());
    }

    fn heal(&self) {
        lock(&self.0).failing.clear();
    }
}

impl Cluster for FakeCluster {
    fn describe(&self) -> String {
        "fake cluster".into()
    }

    async fn find_hosts(
        &self,
        instance_id: &str,
        _deadline: Instant,
    ) -> Result<Vec<ClusterHost>, ClusterError> {
        let mut s = lock(&self.0);
        s.listings += 1;
        if s.find_fails {
            return Err(ClusterError::OutOfTime("listing hosts: no answer".into()));
        }
        let mut hosts: Vec<ClusterHost> = s
            .hosts
            .iter()
            .filter(|(_, (i, state))| i == instance_id && how_far_out(state) < 2)
            .map(|(id, (_, state))| ClusterHost {
                id: id.clone(),
                state: state.clone(),
                active: state == "active",
                hostname: None,
            })
            .collect();
        hosts.sort_by_key(|h| !h.active);
        Ok(hosts)
    }

    async fn hosts(&self, _deadline: Instant) -> Result<Vec<EnvHost>, ClusterError> {
        let mut s = lock(&self.0);
        s.listings += 1;
        if s.find_fails {
            return Err(ClusterError::OutOfTime("listing hosts: no answer".into()));
        }
        Ok(s.hosts
            .iter()
            .filter(|(_, (_, state))| how_far_out(state) < 2)
            .map(|(id, (instance, state))| EnvHost {
                id: id.clone(),
                state: state.clone(),
                instance_id: Some(instance.clone()),
                group: Some(GROUP.into()),
                region: None,
                agent: AgentContact::Connected,
                hostname: None,
            })
            .collect())
    }

    async fn host(
        &self,
        host_id: &str,
        _deadline: Instant,
    ) -> Result<Option<ClusterHost>, ClusterError> {
        let s = lock(&self.0);
        Ok(s.hosts.get(host_id).map(|(_, state)| ClusterHost {
            id: host_id.to_string(),
            state: state.clone(),
            active: state == "active",
            hostname: None,
        }))
    }

    async fn registration(&self, _deadline: Instant) -> Result<AgentRegistration, ClusterError> {
        Err(ClusterError::OutOfTime("not in these tests".into()))
    }

    async fn take_step(
        &self,
        host_id: &str,
        step: Step,
        deadline: Instant,
    ) -> Result<StepDone, StepFailed> {
        let step_time = {
            let s = lock(&self.0);
            match step {
                Step::Evacuate => s.step_time.max(s.evacuation_time),
                _ => s.step_time,
            }
        };
        if Instant::now() + step_time > deadline {
            tokio::time::sleep_until(deadline).await;
            let mut s = lock(&self.0);
            s.steps.push((host_id.to_string(), step));
            return Err(StepFailed {
                state: s
                    .hosts
                    .get(host_id)
                    .map(|h| h.1.clone())
                    .unwrap_or_default(),
                error: "lifecycle.drain_timeout ran out".into(),
                events: vec![],
            });
        }
        tokio::time::sleep(step_time).await;
        let mut s = lock(&self.0);
        s.steps.push((host_id.to_string(), step));
        let event = |what| StepEvent {
            at: SystemTime::now(),
            what,
        };
        let failing = s.failing.get(&step).cloned();
        let Some((_, state)) = s.hosts.get_mut(host_id) else {
            return Ok(StepDone {
                state: GONE.into(),
                events: vec![event(Happened::Gone)],
            });
        };
        if let Some(error) = failing {
            return Err(StepFailed {
                state: state.clone(),
                error,
                events: vec![],
            });
        }
        let (target, to) = match step {
            Step::Evacuate => {
                return Ok(StepDone {
                    state: state.clone(),
                    events: vec![event(Happened::Sent {
                        action: "evacuate".into(),
                        from: state.clone(),
                    })],
                })
            }
            Step::Deactivate => (1, "inactive"),
            Step::Remove => (2, "removed"),
            Step::Purge => (3, "purged"),
        };
        if how_far_out(state) >= target {
            return Ok(StepDone {
                state: state.clone(),
                events: vec![],
            });
        }
        let from = std::mem::replace(state, to.to_string());
        Ok(StepDone {
            state: to.into(),
            events: vec![
                event(Happened::Sent {
                    action: step.name().into(),
                    from,
                }),
                event(Happened::Became(to.into())),
            ],
        })
    }
}

// ---- Auto Scaling ----

#[derive(Debug, thiserror::Error)]
#[error("{text}")]
struct FakeError {
    text: String,
    transient: bool,
    no_active: bool,
}

impl CallFailure for FakeError {
    fn is_transient(&self) -> bool {
        self.transient
    }
    fn is_no_active_action(&self) -> bool {
        self.no_active
    }
}

fn throttled() -> FakeError {
    FakeError {
        text: "Throttling: Rate exceeded".into(),
        transient: true,
        no_active: false,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Completed {
    group: String,
    hook: String,
    instance_id: String,
    result: LifecycleResult,
}

#[derive(Default)]
struct AsgState {
    /// Instance -> (group, lifecycle state).
    instances: HashMap<String, (String, String)>,
    /// A state the instance takes once the time comes (the group catching up with IMDS).
    later: HashMap<String, (Instant, String)>,
    hooks: HashMap<String, Vec<LifecycleHook>>,
    completions: Vec<Completed>,
    /// Completions refused because the instance was not waiting.
    refused: usize,
    heartbeats: usize,
    calls: usize,
    membership_fails: bool,
    hooks_fail: bool,
}

#[derive(Clone, Default)]
struct FakeAsg(Arc<Mutex<AsgState>>);

fn hook(name: &str, transition: &str, timeout: i32) -> LifecycleHook {
    LifecycleHook {
        name: name.into(),
        transition: transition.into(),
        heartbeat_timeout_secs: Some(timeout),
    }
}

impl FakeAsg {
    fn place(&self, instance: &str, group: &str, state: &str) {
        lock(&self.0)
            .instances
            .insert(instance.into(), (group.into(), state.into()));
    }

    fn set_hooks(&self, group: &str, hooks: Vec<LifecycleHook>) {
        lock(&self.0).hooks.insert(group.into(), hooks);
    }

    fn completions(&self) -> Vec<Completed> {
        lock(&self.0).completions.clone()
    }

    fn calls(&self) -> usize {
        lock(&self.0).calls
    }

    fn state(&self, instance: &str) -> Option<String> {
        let mut s = lock(&self.0);
        if let Some((at, state)) = s.later.get(instance).cloned() {
            if Instant::now() >= at {
                s.later.remove(instance);
                if let Some(i) = s.instances.get_mut(instance) {
                    i.1 = state;
                }
            }
        }
        s.instances.get(instance).map(|(_, st)| st.clone())
    }
}

impl LifecycleActions for FakeAsg {
    type Error = FakeError;

    async fn membership(&self, instance_id: &str) -> Result<Option<GroupMembership>, FakeError> {
        let state = self.state(instance_id);
        let mut s = lock(&self.0);
        s.calls += 1;
        if s.membership_fails {
            return Err(throttled());
        }
        Ok(s.instances
            .get(instance_id)
            .map(|(group, _)| GroupMembership {
                group: group.clone(),
                lifecycle_state: state,
            }))
    }

    async fn memberships(
        &self,
        instance_ids: &[String],
    ) -> Result<HashMap<String, GroupMembership>, FakeError> {
        let mut found = HashMap::new();
        for id in instance_ids {
            if let Some(m) = self.membership(id).await? {
                found.insert(id.clone(), m);
            }
        }
        Ok(found)
    }

    async fn warm_pool(&self, group: &str) -> Result<Vec<WarmedInstance>, FakeError> {
        let ids: Vec<String> = lock(&self.0).instances.keys().cloned().collect();
        let mut pool = Vec::new();
        for id in ids {
            let state = self.state(&id);
            let s = lock(&self.0);
            let in_group = s.instances.get(&id).is_some_and(|(g, _)| g == group);
            if in_group && state.as_deref().is_some_and(|st| st.starts_with("Warmed:")) {
                pool.push(WarmedInstance {
                    instance_id: id,
                    lifecycle_state: state,
                });
            }
        }
        pool.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        Ok(pool)
    }

    async fn hooks(&self, group: &str) -> Result<Vec<LifecycleHook>, FakeError> {
        let mut s = lock(&self.0);
        s.calls += 1;
        if s.hooks_fail {
            return Err(FakeError {
                text: "AccessDenied".into(),
                transient: false,
                no_active: false,
            });
        }
        Ok(s.hooks.get(group).cloned().unwrap_or_default())
    }

    async fn complete(
        &self,
        action: ActionRef<'_>,
        result: LifecycleResult,
    ) -> Result<(), FakeError> {
        let state = self.state(action.instance_id);
        let mut s = lock(&self.0);
        s.calls += 1;
        let next = match (state.as_deref(), result) {
            (Some("Terminating:Wait"), _) => "Terminating:Proceed",
            (Some("Pending:Wait"), LifecycleResult::Continue) => "InService",
            (Some("Pending:Wait"), LifecycleResult::Abandon) => "Terminating",
            (Some("Warmed:Pending:Wait"), _) => "Warmed:Stopped",
            (Some("Warmed:Terminating:Wait"), _) => "Warmed:Terminating:Proceed",
            _ => "",
        };
        if next.is_empty() {
            s.refused += 1;
            return Err(FakeError {
                text: format!(
                    "ValidationError: No active Lifecycle Action found with instance ID {}",
                    action.instance_id
                ),
                transient: false,
                no_active: true,
            });
        }
        s.completions.push(Completed {
            group: action.group.into(),
            hook: action.hook.into(),
            instance_id: action.instance_id.into(),
            result,
        });
        if let Some(i) = s.instances.get_mut(action.instance_id) {
            i.1 = next.into();
        }
        Ok(())
    }

    async fn heartbeat(&self, _action: ActionRef<'_>) -> Result<(), FakeError> {
        let mut s = lock(&self.0);
        s.calls += 1;
        s.heartbeats += 1;
        Ok(())
    }
}

// ---- The local agent and the pager ----

#[derive(Clone, Default)]
struct FakeAgent(Arc<Mutex<usize>>);

impl LocalAgent for FakeAgent {
    async fn stop(&self) -> Result<bool, String> {
        *lock(&self.0) += 1;
        Ok(true)
    }
}

#[derive(Default)]
struct PagerState {
    triggers: Vec<Incident>,
    resolves: Vec<String>,
    reports: Vec<Report>,
}

#[derive(Clone, Default)]
struct FakePager(Arc<Mutex<PagerState>>);

impl FakePager {
    fn failed_steps(&self) -> Vec<String> {
        lock(&self.0)
            .triggers
            .iter()
            .map(|i| i.failed_step.clone())
            .collect()
    }

    fn resolves(&self) -> Vec<String> {
        lock(&self.0).resolves.clone()
    }

    fn reports(&self) -> Vec<Report> {
        lock(&self.0).reports.clone()
    }
}

impl Paging for FakePager {
    fn is_configured(&self) -> bool {
        true
    }

    async fn trigger(&self, incident: &Incident, _deadline: Instant) -> Result<(), PagerError> {
        lock(&self.0).triggers.push(incident.clone());
        Ok(())
    }

    async fn resolve(
        &self,
        kind: IncidentKind,
        instance_id: &str,
        _summary: &str,
        _deadline: Instant,
    ) -> Result<(), PagerError> {
        let key = match kind {
            IncidentKind::TakeOut => instance_id.to_string(),
            IncidentKind::Boot => format!("boot:{instance_id}"),
            IncidentKind::Reap => format!("reap:{instance_id}"),
        };
        lock(&self.0).resolves.push(key);
        Ok(())
    }

    async fn report(&self, report: &Report, _deadline: Instant) -> Result<(), PagerError> {
        lock(&self.0).reports.push(report.clone());
        Ok(())
    }
}

// ---- The bed ----

/// The fakes, a state dir and the settings: this instance and one peer, both in the group
/// with a termination hook, both with an active host.
struct Bed {
    cluster: FakeCluster,
    asg: FakeAsg,
    agent: FakeAgent,
    pager: FakePager,
    dir: tempfile::TempDir,
    settings: Settings,
    metrics: Metrics,
}

/// A consumer running on a tracker, with its door and its two tokens.
struct Running {
    door: mpsc::Sender<Work>,
    intake: CancellationToken,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl Bed {
    fn new() -> Bed {
        let bed = Bed {
            cluster: FakeCluster::default(),
            asg: FakeAsg::default(),
            agent: FakeAgent::default(),
            pager: FakePager::default(),
            dir: tempfile::tempdir().expect("state dir"),
            settings: Settings {
                own_instance: OWN.into(),
                own_group: Some(GROUP.into()),
                drain_timeout: Duration::from_secs(600),
                on_failure: LifecycleResult::Continue,
                evacuate: false,
                handle_peers: true,
                hook_name: None,
                launch_hook: LaunchHook::FromGroup,
                cluster_url: "https://rancher.example.com/".into(),
            },
            metrics: Metrics::off(),
        };
        bed.asg.set_hooks(
            GROUP,
            vec![
                hook("boot", LAUNCHING_TRANSITION, 300),
                hook(HOOK, TERMINATING_TRANSITION, 300),
            ],
        );
        bed.asg.place(OWN, GROUP, "Terminating:Wait");
        bed.asg.place(PEER, GROUP, "Terminating:Wait");
        bed.cluster.add(OWN_HOST, OWN);
        bed.cluster.add(PEER_HOST, PEER);
        bed
    }

    /// The group gets a second termination hook, `second`, after `drain`.
    fn two_termination_hooks(&self) {
        self.asg.set_hooks(
            GROUP,
            vec![
                hook(HOOK, TERMINATING_TRANSITION, 300),
                hook("second", TERMINATING_TRANSITION, 300),
            ],
        );
    }

    fn records(&self) -> Records {
        Records::new(StateDir::new(self.dir.path()))
    }

    fn record(&self, instance: &str) -> Option<TakeOutRecord> {
        self.records().read(instance)
    }

    fn start(&self) -> Running {
        let workflow = Workflow::new(
            self.settings.clone(),
            self.cluster.clone(),
            self.asg.clone(),
            self.agent.clone(),
            self.pager.clone(),
            self.records(),
        )
        .with_metrics(self.metrics.clone());
        let stop = CancellationToken::new();
        let intake = stop.child_token();
        let tracker = TaskTracker::new();
        let door = workflow.start(intake.clone(), stop.clone(), &tracker);
        Running {
            door,
            intake,
            stop,
            tracker,
        }
    }

    /// One termination through a fresh consumer, to its outcome.
    async fn terminate(&self, t: Termination) -> Outcome {
        let running = self.start();
        running.send(t).await.await.expect("an outcome")
    }

    fn agent_stops(&self) -> usize {
        *lock(&self.agent.0)
    }

    fn completions(&self) -> Vec<Completed> {
        self.asg.completions()
    }
}

impl Running {
    async fn send(&self, t: Termination) -> oneshot::Receiver<Outcome> {
        let (work, reply) = Work::terminate(t);
        self.door.send(work).await.expect("the consumer takes work");
        reply
    }

    async fn stop_work(&self, take_out: Option<Termination>) -> oneshot::Receiver<Option<Outcome>> {
        let (work, reply) = Work::stop(take_out);
        self.door.send(work).await.expect("the consumer takes work");
        reply
    }
}

fn message(instance: &str) -> Termination {
    let mut t = Termination::new(instance, Source::Sqs);
    t.group = Some(GROUP.into());
    t.hook = Some(HOOK.into());
    t
}

fn completed(instance: &str, hook: &str, result: LifecycleResult) -> Completed {
    Completed {
        group: GROUP.into(),
        hook: hook.into(),
        instance_id: instance.into(),
        result,
    }
}

fn all_steps(host: &str) -> Vec<(String, Step)> {
    [Step::Deactivate, Step::Remove, Step::Purge]
        .into_iter()
        .map(|s| (host.to_string(), s))
        .collect()
}

/// Lets the consumer and its work run until `done` holds (paused time moves on its own).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..10_000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: never");
}

// ---- Own host and a peer's ----

#[tokio::test(start_paused = true)]
async fn a_take_out_that_went_well_is_reported_with_its_timeline_a_failed_one_is_paged() {
    let bed = Bed::new();
    assert_eq!(bed.terminate(message(PEER)).await, Outcome::Done);
    let reports = bed.pager.reports();
    assert_eq!(reports.len(), 1, "{reports:?}");
    let report = &reports[0];
    assert_eq!(report.instance_id, PEER);
    assert_eq!(report.host_id.as_deref(), Some(PEER_HOST));
    assert_eq!(report.source, "sqs");
    assert!(report.hook_completed);
    let events: Vec<&str> = report.timeline.iter().map(|(_, e)| e.as_str()).collect();
    assert!(
        events.contains(&"completed lifecycle action crawlers/drain with CONTINUE"),
        "{events:?}"
    );
    assert!(bed.pager.failed_steps().is_empty());

    // The same instance again: already handled, nothing new to tell.
    assert_eq!(bed.terminate(message(PEER)).await, Outcome::Done);
    assert_eq!(bed.pager.reports().len(), 1);

    let bed = Bed::new();
    bed.cluster.fail(Step::Deactivate, "boom");
    assert_eq!(
        bed.terminate(message(OWN)).await,
        Outcome::FailedButCompleted
    );
    assert_eq!(bed.pager.failed_steps(), ["deactivate"]);
    assert!(
        bed.pager.reports().is_empty(),
        "a failure is paged, not reported"
    );
}

#[tokio::test(start_paused = true)]
async fn take_outs_are_counted_by_source_and_outcome() {
    let dir = tempfile::tempdir().expect("metrics dir");
    let path = dir.path().join("drover.prom");
    let mut bed = Bed::new();
    bed.metrics = Metrics::to_textfile(Some(&path));
    assert_eq!(bed.terminate(message(PEER)).await, Outcome::Done);
    bed.cluster.fail(Step::Deactivate, "boom");
    assert_eq!(
        bed.terminate(Termination::new(OWN, Source::Signal)).await,
        Outcome::FailedButCompleted
    );
    // A peer that has no host here is not a take-out.
    assert_eq!(
        bed.terminate(message("i-0000000000000000f")).await,
        Outcome::NotHere
    );
    let text = std::fs::read_to_string(&path).expect("textfile");
    let lines: Vec<&str> = text.lines().collect();
    for line in [
        "drover_take_outs_total{outcome=\"done\",source=\"sqs\"} 1",
        "drover_take_outs_total{outcome=\"failed\",source=\"signal\"} 1",
        "drover_pages_total{outcome=\"sent\"} 0",
    ] {
        assert!(lines.contains(&line), "{line} not in:\n{text}");
    }
    assert!(!text.contains("not_here"), "{text}");
    assert!(
        text.contains("drover_take_out_duration_seconds{outcome=\"done\",source=\"sqs\"}"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn own_host_is_taken_out_its_agent_stopped_and_its_hook_completed() {
    let bed = Bed::new();
    let outcome = bed
        .terminate(Termination::new(OWN, Source::ImdsTargetState))
        .await;
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(bed.cluster.steps(), all_steps(OWN_HOST));
    assert_eq!(bed.cluster.state(OWN_HOST).as_deref(), Some("purged"));
    assert_eq!(bed.agent_stops(), 1);
    assert_eq!(
        bed.completions(),
        [completed(OWN, HOOK, LifecycleResult::Continue)]
    );
    let record = bed.record(OWN).expect("record");
    assert!(record.finished(), "{record:?}");
    assert_eq!(record.host_id.as_deref(), Some(OWN_HOST));
    let events: Vec<&str> = record.timeline.iter().map(|(_, e)| e.as_str()).collect();
    for expected in [
        "deactivate (host active)",
        "host inactive",
        "host 1h1 out of Rancher (purged)",
        "stopped the local rancher-agent container",
        "completed lifecycle action crawlers/drain with CONTINUE",
    ] {
        assert!(events.contains(&expected), "{expected} in {events:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_peers_host_is_taken_out_and_the_peers_hook_completed_but_no_agent_stopped() {
    let bed = Bed::new();
    assert_eq!(bed.terminate(message(PEER)).await, Outcome::Done);
    assert_eq!(bed.cluster.steps(), all_steps(PEER_HOST));
    assert_eq!(bed.cluster.state(OWN_HOST).as_deref(), Some("active"));
    assert_eq!(bed.agent_stops(), 0, "the local agent is this host's");
    assert_eq!(
        bed.completions(),
        [completed(PEER, HOOK, LifecycleResult::Continue)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_peer_is_left_alone_when_handle_peers_is_off() {
    let mut bed = Bed::new();
    bed.settings.handle_peers = false;
    assert_eq!(bed.terminate(message(PEER)).await, Outcome::NotHere);
    assert!(bed.cluster.steps().is_empty());
    assert_eq!(bed.asg.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_peer_without_a_host_here_is_handed_back() {
    let bed = Bed::new();
    bed.asg.place(STRANGER, GROUP, "Terminating:Wait");
    assert_eq!(bed.terminate(message(STRANGER)).await, Outcome::NotHere);
    assert!(bed.cluster.steps().is_empty());
    assert!(bed.completions().is_empty(), "not ours to answer");
}

#[tokio::test(start_paused = true)]
async fn a_peer_whose_host_cannot_be_looked_up_is_handed_back_unpaged() {
    let bed = Bed::new();
    lock(&bed.cluster.0).find_fails = true;
    assert_eq!(bed.terminate(message(PEER)).await, Outcome::NotHere);
    assert!(bed.completions().is_empty());
    assert!(bed.pager.failed_steps().is_empty());
}

#[tokio::test(start_paused = true)]
async fn own_host_that_cannot_be_looked_up_pages_and_answers_with_on_failure() {
    let mut bed = Bed::new();
    bed.settings.on_failure = LifecycleResult::Abandon;
    lock(&bed.cluster.0).find_fails = true;
    let outcome = bed
        .terminate(Termination::new(OWN, Source::ImdsTargetState))
        .await;
    assert_eq!(outcome, Outcome::FailedButCompleted);
    assert_eq!(bed.pager.failed_steps(), ["find host"]);
    assert_eq!(
        bed.completions(),
        [completed(OWN, HOOK, LifecycleResult::Abandon)]
    );
}

// ---- A message is a claim: Auto Scaling confirms it ----

#[tokio::test(start_paused = true)]
async fn a_message_for_an_instance_in_service_changes_nothing() {
    let bed = Bed::new();
    bed.asg.place(PEER, GROUP, "InService");
    assert_eq!(bed.terminate(message(PEER)).await, Outcome::NotCompleted);
    assert!(bed.cluster.steps().is_empty());
    assert!(bed.completions().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_message_naming_another_group_changes_nothing() {
    let bed = Bed::new();
    let mut forged = message(PEER);
    forged.group = Some("someone-elses".into());
    assert_eq!(bed.terminate(forged).await, Outcome::NotCompleted);
    assert!(bed.cluster.steps().is_empty());
    assert!(bed.completions().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_message_for_an_instance_in_no_group_changes_nothing() {
    let bed = Bed::new();
    lock(&bed.asg.0).instances.remove(PEER);
    assert_eq!(bed.terminate(message(PEER)).await, Outcome::NotCompleted);
    assert!(bed.cluster.steps().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_message_auto_scaling_cannot_confirm_changes_nothing() {
    let bed = Bed::new();
    lock(&bed.asg.0).membership_fails = true;
    let started = Instant::now();
    assert_eq!(bed.terminate(message(PEER)).await, Outcome::NotCompleted);
    assert!(bed.cluster.steps().is_empty());
    assert!(
        started.elapsed() >= Duration::from_secs(50),
        "throttling is ridden out before giving up: {:?}",
        started.elapsed()
    );
    assert!(bed.asg.calls() > 3, "retried: {}", bed.asg.calls());
}

// ---- Which hook ----

#[tokio::test(start_paused = true)]
async fn the_termination_hook_the_message_names_is_answered() {
    let bed = Bed::new();
    bed.two_termination_hooks();
    let mut t = message(PEER);
    t.hook = Some("second".into());
    assert_eq!(bed.terminate(t).await, Outcome::Done);
    assert_eq!(
        bed.completions(),
        [completed(PEER, "second", LifecycleResult::Continue)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_named_hook_that_is_no_termination_hook_is_not_answered() {
    let bed = Bed::new();
    let mut t = message(PEER);
    t.hook = Some("boot".into());
    assert_eq!(bed.terminate(t).await, Outcome::Done);
    assert_eq!(
        bed.completions(),
        [completed(PEER, HOOK, LifecycleResult::Continue)]
    );
}

#[tokio::test(start_paused = true)]
async fn the_configured_hook_is_answered_when_the_source_names_none() {
    let mut bed = Bed::new();
    bed.two_termination_hooks();
    bed.settings.hook_name = Some("second".into());
    let outcome = bed
        .terminate(Termination::new(OWN, Source::ImdsTargetState))
        .await;
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(
        bed.completions(),
        [completed(OWN, "second", LifecycleResult::Continue)]
    );
}

#[tokio::test(start_paused = true)]
async fn the_group_and_hook_are_looked_up_when_nobody_names_them() {
    let mut bed = Bed::new();
    bed.settings.own_group = None;
    let outcome = bed
        .terminate(Termination::new(OWN, Source::ImdsTargetState))
        .await;
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(
        bed.completions(),
        [completed(OWN, HOOK, LifecycleResult::Continue)]
    );
    assert_eq!(
        bed.record(OWN).and_then(|r| r.group).as_deref(),
        Some(GROUP)
    );
}

#[tokio::test(start_paused = true)]
async fn no_termination_hook_means_nothing_to_answer() {
    let bed = Bed::new();
    bed.asg
        .set_hooks(GROUP, vec![hook("boot", LAUNCHING_TRANSITION, 300)]);
    let outcome = bed
        .terminate(Termination::new(OWN, Source::ImdsTargetState))
        .await;
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(bed.cluster.steps(), all_steps(OWN_HOST));
    assert!(bed.completions().is_empty());
    assert!(bed.record(OWN).expect("record").finished());
}

#[tokio::test(start_paused = true)]
async fn a_hook_auto_scaling_cannot_name_pages_and_keeps_the_message() {
    let bed = Bed::new();
    lock(&bed.asg.0).hooks_fail = true;
    assert_eq!(bed.terminate(message(PEER)).await, Outcome::NotCompleted);
    // The confirmed host is out all the same; only the answer is left for the next try.
    assert_eq!(bed.cluster.steps(), all_steps(PEER_HOST));
    assert_eq!(bed.pager.failed_steps(), ["find the lifecycle action"]);
    assert!(bed.completions().is_empty());
    let record = bed.record(PEER).expect("record");
    assert!(record.taken_out && !record.hook_completed, "{record:?}");
}

#[tokio::test(start_paused = true)]
async fn a_configured_hook_the_group_lacks_cannot_be_answered() {
    let mut bed = Bed::new();
    bed.settings.hook_name = Some("nosuch".into());
    let outcome = bed
        .terminate(Termination::new(OWN, Source::ImdsTargetState))
        .await;
    assert_eq!(outcome, Outcome::NotCompleted);
    assert_eq!(bed.pager.failed_steps(), ["find the lifecycle action"]);
    assert!(bed.completions().is_empty());
}

#[tokio::test(start_paused = true)]
async fn deregistering_an_instance_in_service_answers_no_action() {
    let bed = Bed::new();
    bed.asg.place(OWN, GROUP, "InService");
    let outcome = bed.terminate(Termination::new(OWN, Source::Command)).await;
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(bed.cluster.steps(), all_steps(OWN_HOST));
    assert!(bed.completions().is_empty());
    assert!(bed.pager.failed_steps().is_empty());
}

// ---- Take-out done, failed, removed but not purged ----

#[tokio::test(start_paused = true)]
async fn a_failed_take_out_pages_and_answers_with_on_failure() {
    let mut bed = Bed::new();
    bed.settings.on_failure = LifecycleResult::Abandon;
    bed.cluster.fail(Step::Deactivate, "Rancher answered 500");
    let outcome = bed.terminate(message(PEER)).await;
    assert_eq!(outcome, Outcome::FailedButCompleted);
    assert_eq!(bed.pager.failed_steps(), ["deactivate"]);
    assert_eq!(
        bed.completions(),
        [completed(PEER, HOOK, LifecycleResult::Abandon)]
    );
    assert!(!bed.record(PEER).expect("record").taken_out);
    assert_eq!(bed.cluster.steps(), [(PEER_HOST.into(), Step::Deactivate)]);
}

#[tokio::test(start_paused = true)]
async fn a_removed_host_whose_purge_fails_is_out() {
    let bed = Bed::new();
    bed.cluster.fail(Step::Purge, "purge refused");
    assert_eq!(bed.terminate(message(PEER)).await, Outcome::Done);
    assert_eq!(bed.cluster.state(PEER_HOST).as_deref(), Some("removed"));
    assert!(bed.pager.failed_steps().is_empty());
    assert_eq!(
        bed.completions(),
        [completed(PEER, HOOK, LifecycleResult::Continue)]
    );
    let record = bed.record(PEER).expect("record");
    assert!(record
        .timeline
        .iter()
        .any(|(_, e)| e.contains("purges removed hosts on its own")));
}

#[tokio::test(start_paused = true)]
async fn a_host_rancher_no_longer_knows_is_out() {
    let bed = Bed::new();
    // Listed when looked up, gone by the first step.
    let t = message(PEER);
    let running = bed.start();
    lock(&bed.cluster.0).step_time = Duration::from_secs(1);
    let reply = running.send(t).await;
    until("the take-out started", || bed.record(PEER).is_some()).await;
    lock(&bed.cluster.0).hosts.remove(PEER_HOST);
    assert_eq!(reply.await.expect("outcome"), Outcome::Done);
    assert_eq!(bed.cluster.steps(), [(PEER_HOST.into(), Step::Deactivate)]);
    assert_eq!(bed.completions().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_later_success_resolves_the_earlier_page() {
    let bed = Bed::new();
    bed.cluster.fail(Step::Deactivate, "Rancher answered 500");
    assert_eq!(
        bed.terminate(Termination::new(OWN, Source::ImdsTargetState))
            .await,
        Outcome::FailedButCompleted
    );
    assert!(bed.record(OWN).expect("record").paged);
    // A restarted drover (a new consumer) resumes: the host goes out this time.
    bed.cluster.heal();
    assert_eq!(
        bed.terminate(Termination::new(OWN, Source::Resume)).await,
        Outcome::Done
    );
    assert_eq!(bed.pager.resolves(), [OWN]);
    assert!(!bed.record(OWN).expect("record").paged);
    assert_eq!(bed.completions().len(), 1, "answered once, the first time");
}

#[tokio::test(start_paused = true)]
async fn a_resumed_take_out_skips_what_is_done() {
    let bed = Bed::new();
    bed.records().save(&TakeOutRecord {
        instance_id: OWN.into(),
        host_id: Some(OWN_HOST.into()),
        group: Some(GROUP.into()),
        hook: Some(HOOK.into()),
        source: "sqs".into(),
        taken_out: true,
        ..TakeOutRecord::default()
    });
    let outcome = bed.terminate(Termination::new(OWN, Source::Resume)).await;
    assert_eq!(outcome, Outcome::Done);
    assert!(bed.cluster.steps().is_empty(), "the host was out already");
    assert_eq!(bed.agent_stops(), 1, "its agent may still run");
    assert_eq!(bed.completions().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_finished_record_means_nothing_is_done_again() {
    let bed = Bed::new();
    bed.records().save(&TakeOutRecord {
        instance_id: PEER.into(),
        host_id: Some(PEER_HOST.into()),
        taken_out: true,
        hook_completed: true,
        ..TakeOutRecord::default()
    });
    assert_eq!(bed.terminate(message(PEER)).await, Outcome::Done);
    assert!(bed.cluster.steps().is_empty());
    assert_eq!(bed.asg.calls(), 0);
}

// ---- Sources ----

#[tokio::test(start_paused = true)]
async fn a_spot_interruption_skips_evacuation_which_others_do_first() {
    let mut bed = Bed::new();
    bed.settings.evacuate = true;
    let mut spot = Termination::new(OWN, Source::Spot);
    spot.urgent = true;
    spot.deadline = Some(SystemTime::now() + Duration::from_secs(120));
    assert_eq!(bed.terminate(spot).await, Outcome::Done);
    assert_eq!(bed.cluster.steps(), all_steps(OWN_HOST));
    assert_eq!(bed.terminate(message(PEER)).await, Outcome::Done);
    let peer_steps: Vec<Step> = bed
        .cluster
        .steps()
        .into_iter()
        .filter(|(h, _)| h == PEER_HOST)
        .map(|(_, s)| s)
        .collect();
    assert_eq!(
        peer_steps,
        [Step::Evacuate, Step::Deactivate, Step::Remove, Step::Purge]
    );
}

#[tokio::test(start_paused = true)]
async fn an_evacuation_that_outlasts_drain_timeout_pages_and_answers_with_on_failure() {
    let mut bed = Bed::new();
    bed.settings.evacuate = true;
    bed.settings.on_failure = LifecycleResult::Abandon;
    bed.settings.drain_timeout = Duration::from_secs(60);
    lock(&bed.cluster.0).evacuation_time = Duration::from_secs(120);
    assert_eq!(
        bed.terminate(message(OWN)).await,
        Outcome::FailedButCompleted
    );
    // The host keeps its containers and stays: nothing after the evacuation is tried.
    assert_eq!(
        bed.cluster.steps(),
        [(OWN_HOST.to_string(), Step::Evacuate)]
    );
    assert_eq!(bed.cluster.state(OWN_HOST).as_deref(), Some("active"));
    assert_eq!(bed.agent_stops(), 0);
    assert_eq!(bed.pager.failed_steps(), ["evacuate"]);
    assert_eq!(
        bed.completions(),
        [completed(OWN, HOOK, LifecycleResult::Abandon)]
    );
    let record = bed.record(OWN).expect("record");
    assert!(!record.taken_out && record.paged, "{record:?}");
}

#[tokio::test(start_paused = true)]
async fn a_spot_interruption_bounds_the_take_out_by_its_notice() {
    let bed = Bed::new();
    lock(&bed.cluster.0).step_time = Duration::from_secs(60);
    let mut spot = Termination::new(OWN, Source::Spot);
    spot.urgent = true;
    spot.deadline = Some(SystemTime::now() + Duration::from_secs(90));
    let started = Instant::now();
    // Work past the notice is pointless: the take-out gets until then, not drain_timeout.
    assert_eq!(bed.terminate(spot).await, Outcome::FailedButCompleted);
    let took = started.elapsed();
    assert!(
        (Duration::from_secs(89)..Duration::from_secs(100)).contains(&took),
        "{took:?}"
    );
    assert_eq!(
        bed.cluster.steps(),
        [
            (OWN_HOST.to_string(), Step::Deactivate),
            (OWN_HOST.to_string(), Step::Remove)
        ]
    );
    assert_eq!(bed.pager.failed_steps(), ["remove"]);
}

#[tokio::test(start_paused = true)]
async fn the_answer_waits_for_terminating_wait() {
    let bed = Bed::new();
    bed.asg.place(OWN, GROUP, "Terminating");
    lock(&bed.asg.0).later.insert(
        OWN.into(),
        (
            Instant::now() + Duration::from_secs(20),
            "Terminating:Wait".into(),
        ),
    );
    let started = Instant::now();
    let outcome = bed
        .terminate(Termination::new(OWN, Source::ImdsTargetState))
        .await;
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(bed.completions().len(), 1);
    assert!(started.elapsed() >= Duration::from_secs(20));
    assert_eq!(
        lock(&bed.asg.0).refused,
        0,
        "never asked before Terminating:Wait"
    );
}

#[tokio::test(start_paused = true)]
async fn an_action_answered_elsewhere_counts_as_done() {
    let bed = Bed::new();
    bed.asg.place(PEER, GROUP, "Terminating:Proceed");
    assert_eq!(bed.terminate(message(PEER)).await, Outcome::Done);
    assert!(bed.completions().is_empty(), "nothing left to complete");
    assert!(bed.record(PEER).expect("record").finished());
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_a_slow_take_out_alive() {
    let bed = Bed::new();
    bed.asg
        .set_hooks(GROUP, vec![hook(HOOK, TERMINATING_TRANSITION, 30)]);
    lock(&bed.cluster.0).step_time = Duration::from_secs(25);
    assert_eq!(bed.terminate(message(PEER)).await, Outcome::Done);
    // 75 s of steps at one heartbeat per 10 s.
    let beats = lock(&bed.asg.0).heartbeats;
    assert!((6..=8).contains(&beats), "{beats} heartbeats");
}

// ---- The one door: duplicates, settled work, stops ----

#[tokio::test(start_paused = true)]
async fn a_duplicate_joins_the_take_out_under_way() {
    let bed = Bed::new();
    lock(&bed.cluster.0).step_time = Duration::from_secs(5);
    let running = bed.start();
    let first = running.send(message(OWN)).await;
    let second = running
        .send(Termination::new(OWN, Source::ImdsTargetState))
        .await;
    let again = running.send(message(OWN)).await;
    for reply in [first, second, again] {
        assert_eq!(reply.await.expect("outcome"), Outcome::Done);
    }
    assert_eq!(bed.cluster.steps(), all_steps(OWN_HOST), "one take-out");
    assert_eq!(bed.completions().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn settled_work_is_answered_at_once_and_not_done_again() {
    let bed = Bed::new();
    // Failed but answered: the record is not finished, only the consumer knows it settled.
    bed.cluster.fail(Step::Deactivate, "Rancher answered 500");
    let running = bed.start();
    assert_eq!(
        running.send(message(PEER)).await.await.expect("outcome"),
        Outcome::FailedButCompleted
    );
    let calls = bed.asg.calls();
    let steps = bed.cluster.steps();
    assert_eq!(
        running.send(message(PEER)).await.await.expect("outcome"),
        Outcome::FailedButCompleted
    );
    assert_eq!(bed.asg.calls(), calls, "no call for a settled instance");
    assert_eq!(bed.cluster.steps(), steps, "no second take-out");
    assert_eq!(bed.pager.failed_steps(), ["deactivate"], "paged once");
}

#[tokio::test(start_paused = true)]
async fn work_that_was_not_settled_is_tried_again() {
    let bed = Bed::new();
    bed.asg.place(PEER, GROUP, "InService");
    let running = bed.start();
    assert_eq!(
        running.send(message(PEER)).await.await.expect("outcome"),
        Outcome::NotCompleted
    );
    bed.asg.place(PEER, GROUP, "Terminating:Wait");
    assert_eq!(
        running.send(message(PEER)).await.await.expect("outcome"),
        Outcome::Done
    );
    assert_eq!(bed.completions().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hard_stop_during_a_take_out_leaves_it_to_resume() {
    let bed = Bed::new();
    lock(&bed.cluster.0).step_time = Duration::from_secs(5);
    let running = bed.start();
    let reply = running
        .send(Termination::new(OWN, Source::ImdsTargetState))
        .await;
    until("the first step", || !bed.cluster.steps().is_empty()).await;
    running.stop.cancel();
    running.tracker.close();
    running.tracker.wait().await;
    assert!(reply.await.is_err(), "no outcome: the work was cut short");
    let record = bed.record(OWN).expect("record");
    assert!(!record.finished());
    assert!(bed.completions().is_empty());
    // A restart resumes from the record and finishes, answering once.
    assert_eq!(
        bed.terminate(Termination::new(OWN, Source::Resume)).await,
        Outcome::Done
    );
    assert_eq!(bed.cluster.state(OWN_HOST).as_deref(), Some("purged"));
    assert_eq!(bed.completions().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_wind_down_drops_work_not_started_and_finishes_work_under_way() {
    let bed = Bed::new();
    lock(&bed.cluster.0).step_time = Duration::from_secs(5);
    let running = bed.start();
    let under_way = running.send(message(PEER)).await;
    until("the peer's take-out started", || {
        !bed.cluster.steps().is_empty()
    })
    .await;
    // Sent but not taken yet: the consumer has not run since.
    let (work, not_started) = Work::terminate(Termination::new(OWN, Source::ImdsTargetState));
    running.door.try_send(work).expect("room in the door");
    running.intake.cancel();
    // At once, not when the work under way ends: its source hands its input back now.
    let dropped = tokio::time::timeout(Duration::from_secs(1), not_started).await;
    assert!(
        matches!(dropped, Ok(Err(_))),
        "dropped at once, so that it is handed back"
    );
    assert_eq!(under_way.await.expect("outcome"), Outcome::Done);
    running.tracker.close();
    running.tracker.wait().await;
    assert!(running.door.is_closed());
    assert_eq!(bed.cluster.state(OWN_HOST).as_deref(), Some("active"));
}

#[tokio::test(start_paused = true)]
async fn a_stop_that_keeps_the_host_waits_for_its_take_out_under_way() {
    let bed = Bed::new();
    lock(&bed.cluster.0).step_time = Duration::from_secs(5);
    let running = bed.start();
    let first = running.send(message(OWN)).await;
    until("the take-out started", || !bed.cluster.steps().is_empty()).await;
    let stop = running.stop_work(None).await;
    assert_eq!(stop.await.expect("outcome"), Some(Outcome::Done));
    assert_eq!(first.await.expect("outcome"), Outcome::Done);
    assert_eq!(bed.cluster.steps(), all_steps(OWN_HOST));
}

#[tokio::test(start_paused = true)]
async fn a_stop_that_keeps_the_host_changes_nothing() {
    let bed = Bed::new();
    let running = bed.start();
    assert_eq!(running.stop_work(None).await.await.expect("answer"), None);
    assert!(bed.cluster.steps().is_empty());
    assert_eq!(bed.asg.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_stop_that_takes_the_host_out_does_so_once() {
    let bed = Bed::new();
    let running = bed.start();
    let take_out = Termination::new(OWN, Source::Signal);
    assert_eq!(
        running
            .stop_work(Some(take_out.clone()))
            .await
            .await
            .expect("answer"),
        Some(Outcome::Done)
    );
    // The machine stops after the termination was handled: answered at once.
    assert_eq!(
        running
            .stop_work(Some(take_out))
            .await
            .await
            .expect("answer"),
        Some(Outcome::Done)
    );
    assert_eq!(bed.cluster.steps(), all_steps(OWN_HOST));
    assert_eq!(bed.completions().len(), 1);
}

#[test]
fn the_record_file_of_each_instance_is_its_own() {
    let names: HashSet<String> = [OWN, PEER, STRANGER]
        .iter()
        .map(|i| record_file(i))
        .collect();
    assert_eq!(names.len(), 3);
}

// ---- The way in: launching actions ----

const NEW_HOST: &str = "1h9";

impl Bed {
    /// This instance launching: `Pending:Wait` on the `boot` hook, no host yet.
    fn launching() -> Bed {
        let bed = Bed::new();
        bed.asg.place(OWN, GROUP, "Pending:Wait");
        lock(&bed.cluster.0).hosts.remove(OWN_HOST);
        bed
    }

    fn heartbeats(&self) -> usize {
        lock(&self.asg.0).heartbeats
    }

    fn boot_pages(&self) -> Vec<Incident> {
        lock(&self.pager.0)
            .triggers
            .iter()
            .filter(|i| i.kind == IncidentKind::Boot)
            .cloned()
            .collect()
    }
}

/// A registration that takes `time`, then makes `host` active (with `stale` hosts seen).
fn join_ok(cluster: &FakeCluster, host: &str, stale: &[&str], time: Duration) -> Join {
    let cluster = cluster.clone();
    let host = host.to_string();
    let stale: Vec<String> = stale.iter().map(|s| s.to_string()).collect();
    Join::new(async move {
        tokio::time::sleep(time).await;
        cluster.add(&host, OWN);
        Ok(Joined {
            host_id: host,
            stale,
            already_active: false,
        })
    })
}

fn join_err(step: &str, time: Duration) -> Join {
    let step = step.to_string();
    Join::new(async move {
        tokio::time::sleep(time).await;
        Err(JoinFailed {
            step,
            error: "Rancher answered 401 the access key or secret key is wrong".into(),
        })
    })
}

impl Running {
    async fn launch(&self, join: Option<Join>) -> oneshot::Receiver<LaunchOutcome> {
        let (work, reply) = Work::launch(join, Instant::now() + Duration::from_secs(300));
        self.door.send(work).await.expect("the consumer takes work");
        reply
    }
}

#[tokio::test(start_paused = true)]
async fn a_launch_continues_once_the_host_is_active() {
    let bed = Bed::launching();
    let running = bed.start();
    let join = join_ok(&bed.cluster, NEW_HOST, &[], Duration::from_secs(20));
    let outcome = running.launch(Some(join)).await.await.expect("an outcome");
    assert_eq!(
        outcome,
        LaunchOutcome::Registered {
            host_id: NEW_HOST.into()
        }
    );
    assert_eq!(
        bed.completions(),
        [completed(OWN, "boot", LifecycleResult::Continue)]
    );
    assert_eq!(bed.asg.state(OWN).as_deref(), Some("InService"));
    assert!(bed.pager.failed_steps().is_empty());
    assert_eq!(
        bed.heartbeats(),
        0,
        "300 s of heartbeat timeout outlast the registration"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_registration_pages_once_abandons_and_a_later_success_resolves() {
    let bed = Bed::launching();
    let outcome = bed
        .start()
        .launch(Some(join_err("connect to Rancher", Duration::from_secs(5))))
        .await
        .await
        .expect("an outcome");
    assert!(
        matches!(outcome, LaunchOutcome::Failed(ref why) if why.contains("connect to Rancher")),
        "{outcome:?}"
    );
    assert_eq!(
        bed.completions(),
        [completed(OWN, "boot", LifecycleResult::Abandon)]
    );
    let pages = bed.boot_pages();
    assert_eq!(pages.len(), 1, "{pages:?}");
    assert_eq!(pages[0].failed_step, "connect to Rancher");
    assert_eq!(pages[0].instance_id, OWN);
    assert_eq!(pages[0].group.as_deref(), Some(GROUP));
    assert!(pages[0].error.contains("401"), "{:?}", pages[0].error);

    // systemd restarts drover, which fails again: the incident is open already.
    bed.asg.place(OWN, GROUP, "Pending:Wait");
    let again = bed
        .start()
        .launch(Some(join_err("connect to Rancher", Duration::from_secs(5))))
        .await
        .await
        .expect("an outcome");
    assert!(matches!(again, LaunchOutcome::Failed(_)));
    assert_eq!(
        bed.boot_pages().len(),
        1,
        "one incident, not one per restart"
    );

    // The next restart registers: the incident is resolved and forgotten.
    bed.asg.place(OWN, GROUP, "Pending:Wait");
    let join = join_ok(&bed.cluster, NEW_HOST, &[], Duration::from_secs(5));
    let ok = bed
        .start()
        .launch(Some(join))
        .await
        .await
        .expect("an outcome");
    assert!(matches!(ok, LaunchOutcome::Registered { .. }));
    assert_eq!(bed.pager.resolves(), [format!("boot:{OWN}")]);
    assert_eq!(bed.records().boot_failure(), None);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_keep_a_short_launching_hook_alive_while_registering() {
    let bed = Bed::launching();
    bed.asg.set_hooks(
        GROUP,
        vec![
            hook("boot", LAUNCHING_TRANSITION, 30),
            hook(HOOK, TERMINATING_TRANSITION, 300),
        ],
    );
    let join = join_ok(&bed.cluster, NEW_HOST, &[], Duration::from_secs(100));
    let outcome = bed
        .start()
        .launch(Some(join))
        .await
        .await
        .expect("an outcome");
    assert!(matches!(outcome, LaunchOutcome::Registered { .. }));
    // Every 10 s for 100 s.
    assert!(bed.heartbeats() >= 9, "{} heartbeats", bed.heartbeats());
    assert_eq!(
        bed.completions(),
        [completed(OWN, "boot", LifecycleResult::Continue)]
    );
}

#[tokio::test(start_paused = true)]
async fn an_instance_entering_the_warm_pool_is_let_in_without_registering() {
    let bed = Bed::launching();
    bed.asg.place(OWN, GROUP, "Warmed:Pending:Wait");
    let outcome = bed.start().launch(None).await.await.expect("an outcome");
    assert_eq!(outcome, LaunchOutcome::NotRegistered);
    assert_eq!(
        bed.completions(),
        [completed(OWN, "boot", LifecycleResult::Continue)]
    );
    assert!(bed.cluster.steps().is_empty());
}

#[tokio::test(start_paused = true)]
async fn no_launching_action_is_answered_when_turned_off_or_when_none_waits() {
    let mut bed = Bed::launching();
    bed.settings.launch_hook = LaunchHook::Off;
    let join = join_ok(&bed.cluster, NEW_HOST, &[], Duration::from_secs(5));
    let outcome = bed
        .start()
        .launch(Some(join))
        .await
        .await
        .expect("an outcome");
    assert!(matches!(outcome, LaunchOutcome::Registered { .. }));
    assert!(bed.completions().is_empty());

    // In service already (a restarted drover): nothing waits.
    let bed = Bed::launching();
    bed.asg.place(OWN, GROUP, "InService");
    let join = join_ok(&bed.cluster, NEW_HOST, &[], Duration::from_secs(5));
    let outcome = bed
        .start()
        .launch(Some(join))
        .await
        .await
        .expect("an outcome");
    assert!(matches!(outcome, LaunchOutcome::Registered { .. }));
    assert!(bed.completions().is_empty());
    assert_eq!(lock(&bed.asg.0).refused, 0);
}

#[tokio::test(start_paused = true)]
async fn a_termination_while_registering_cuts_it_short_and_takes_out_what_rancher_has() {
    let bed = Bed::launching();
    let running = bed.start();
    // The bootstrap registered a host, which never turns active before the termination.
    lock(&bed.cluster.0)
        .hosts
        .insert(NEW_HOST.into(), (OWN.into(), "registering".into()));
    let launched = running
        .launch(Some(Join::new(std::future::pending())))
        .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    bed.asg.place(OWN, GROUP, "Terminating:Wait");
    let outcome = running
        .send(Termination::new(OWN, Source::ImdsTargetState))
        .await
        .await
        .expect("an outcome");
    assert_eq!(
        launched.await.expect("an outcome"),
        LaunchOutcome::Interrupted
    );
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(bed.cluster.state(NEW_HOST).as_deref(), Some("purged"));
    assert_eq!(bed.agent_stops(), 1);
    assert_eq!(
        bed.completions(),
        [completed(OWN, HOOK, LifecycleResult::Continue)],
        "the termination's hook, and no launching answer"
    );
    assert!(bed.pager.failed_steps().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_termination_with_no_host_yet_stops_the_agent_and_looks_again() {
    let bed = Bed::launching();
    bed.asg.place(OWN, GROUP, "Terminating:Wait");
    let outcome = bed
        .terminate(Termination::new(OWN, Source::ImdsTargetState))
        .await;
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(bed.agent_stops(), 1, "a bootstrap may be under way");
    assert_eq!(
        bed.completions(),
        [completed(OWN, HOOK, LifecycleResult::Continue)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_plain_stop_while_registering_leaves_everything_as_it_is() {
    let bed = Bed::launching();
    let running = bed.start();
    let launched = running
        .launch(Some(Join::new(std::future::pending())))
        .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let stopped = running.stop_work(None).await;
    assert_eq!(stopped.await.expect("an answer"), None);
    assert_eq!(
        launched.await.expect("an outcome"),
        LaunchOutcome::Interrupted
    );
    assert!(bed.completions().is_empty());
    assert!(bed.cluster.steps().is_empty());
    assert_eq!(bed.agent_stops(), 0);
    running.intake.cancel();
    running.tracker.close();
    running.tracker.wait().await;
}

// ---- A host that comes back ----

#[tokio::test(start_paused = true)]
async fn a_registration_supersedes_the_old_take_out_record() {
    let bed = Bed::new();
    bed.asg.place(OWN, GROUP, "InService");
    let first = bed.terminate(Termination::new(OWN, Source::Command)).await;
    assert_eq!(first, Outcome::Done);
    assert!(bed.record(OWN).expect("record").finished());

    // The instance is stopped and started (same id): it registers a new host.
    let join = join_ok(&bed.cluster, NEW_HOST, &[], Duration::from_secs(5));
    let outcome = bed
        .start()
        .launch(Some(join))
        .await
        .await
        .expect("an outcome");
    assert!(matches!(outcome, LaunchOutcome::Registered { .. }));
    assert_eq!(
        bed.record(OWN),
        None,
        "the old record spoke for the old host"
    );

    let second = bed.terminate(Termination::new(OWN, Source::Command)).await;
    assert_eq!(second, Outcome::Done);
    assert_eq!(bed.cluster.state(NEW_HOST).as_deref(), Some("purged"));
}

#[tokio::test(start_paused = true)]
async fn a_finished_record_does_not_speak_for_a_newer_host() {
    let bed = Bed::new();
    bed.asg.place(OWN, GROUP, "InService");
    assert_eq!(
        bed.terminate(Termination::new(OWN, Source::Command)).await,
        Outcome::Done
    );
    // A host registered again without this drover seeing it (another boot's).
    bed.cluster.add(NEW_HOST, OWN);
    assert_eq!(
        bed.terminate(Termination::new(OWN, Source::Command)).await,
        Outcome::Done
    );
    assert_eq!(bed.cluster.state(NEW_HOST).as_deref(), Some("purged"));
}

#[tokio::test(start_paused = true)]
async fn every_host_of_the_instance_is_taken_out() {
    let bed = Bed::new();
    lock(&bed.cluster.0)
        .hosts
        .insert(NEW_HOST.into(), (OWN.into(), "reconnecting".into()));
    let outcome = bed
        .terminate(Termination::new(OWN, Source::ImdsTargetState))
        .await;
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(bed.cluster.state(OWN_HOST).as_deref(), Some("purged"));
    assert_eq!(bed.cluster.state(NEW_HOST).as_deref(), Some("purged"));
    assert_eq!(bed.agent_stops(), 1, "once, after the last host");
    let record = bed.record(OWN).expect("record");
    assert_eq!(record.host_id.as_deref(), Some(OWN_HOST));
    assert_eq!(record.other_hosts, [NEW_HOST]);
}

#[tokio::test(start_paused = true)]
async fn a_registration_takes_out_the_stale_hosts_it_saw() {
    let bed = Bed::launching();
    lock(&bed.cluster.0)
        .hosts
        .insert(OWN_HOST.into(), (OWN.into(), "disconnected".into()));
    let join = join_ok(&bed.cluster, NEW_HOST, &[OWN_HOST], Duration::from_secs(5));
    let outcome = bed
        .start()
        .launch(Some(join))
        .await
        .await
        .expect("an outcome");
    assert!(matches!(outcome, LaunchOutcome::Registered { .. }));
    assert_eq!(bed.cluster.state(OWN_HOST).as_deref(), Some("purged"));
    assert_eq!(bed.cluster.state(NEW_HOST).as_deref(), Some("active"));
    assert_eq!(bed.agent_stops(), 0, "the agent runs the new host");
}

#[tokio::test(start_paused = true)]
async fn a_return_to_the_warm_pool_takes_the_host_out_and_lets_the_instance_in() {
    let bed = Bed::new();
    bed.asg.place(OWN, GROUP, "Warmed:Pending:Wait");
    let outcome = bed.terminate(Termination::new(OWN, Source::WarmPool)).await;
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(bed.cluster.state(OWN_HOST).as_deref(), Some("purged"));
    assert_eq!(
        bed.completions(),
        [completed(OWN, HOOK, LifecycleResult::Continue)]
    );

    // The same return noticed as a stop at power-off (no IMDS polling).
    let bed = Bed::new();
    bed.asg.place(OWN, GROUP, "Warmed:Pending:Wait");
    let outcome = bed.terminate(Termination::new(OWN, Source::Signal)).await;
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(
        bed.completions(),
        [completed(OWN, HOOK, LifecycleResult::Continue)]
    );
}

// ---- The reaper's work ----

/// What a sweep sends for a host whose instance died: the hosts it saw, the group label.
fn reaped(instance: &str, hosts: &[&str]) -> Termination {
    let mut t = Termination::new(instance, Source::Reaper);
    t.group = Some(GROUP.into());
    t.hosts = Some(hosts.iter().map(|h| h.to_string()).collect());
    t
}

#[tokio::test(start_paused = true)]
async fn a_reaped_host_of_a_gone_instance_is_taken_out_without_listing_again() {
    let mut bed = Bed::new();
    // The reaper has a switch of its own: handle_peers does not hold it back.
    bed.settings.handle_peers = false;
    lock(&bed.asg.0).instances.remove(PEER);
    let outcome = bed.terminate(reaped(PEER, &[PEER_HOST])).await;
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(bed.cluster.steps(), all_steps(PEER_HOST));
    assert_eq!(bed.cluster.state(OWN_HOST).as_deref(), Some("active"));
    assert!(
        bed.completions().is_empty(),
        "no action waits for a gone instance"
    );
    assert_eq!(
        lock(&bed.cluster.0).listings,
        0,
        "the sweep's listing serves"
    );
    assert_eq!(bed.agent_stops(), 0, "not this host's agent");
    let record = bed.record(PEER).expect("the same record as any take-out");
    assert_eq!(record.source, "reaper");
    assert!(record.finished());
}

#[tokio::test(start_paused = true)]
async fn a_reaped_instance_waiting_in_terminating_wait_is_completed_with_continue() {
    for state in ["Terminating:Wait", "Terminating"] {
        let bed = Bed::new();
        bed.asg.place(PEER, GROUP, state);
        if state == "Terminating" {
            // The group holds it at the hook a little later.
            lock(&bed.asg.0).later.insert(
                PEER.into(),
                (
                    Instant::now() + Duration::from_secs(20),
                    "Terminating:Wait".into(),
                ),
            );
        }
        let outcome = bed.terminate(reaped(PEER, &[PEER_HOST])).await;
        assert_eq!(outcome, Outcome::Done, "{state}");
        assert_eq!(bed.cluster.state(PEER_HOST).as_deref(), Some("purged"));
        assert_eq!(
            bed.completions(),
            [completed(PEER, HOOK, LifecycleResult::Continue)],
            "{state}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_workflow_asks_auto_scaling_again_before_reaping() {
    // Alive after all (the sweep's answer is a moment old): nothing touched.
    for state in ["InService", "Terminating:Proceed", "Standby"] {
        let bed = Bed::new();
        bed.asg.place(PEER, GROUP, state);
        let outcome = bed.terminate(reaped(PEER, &[PEER_HOST])).await;
        assert_eq!(outcome, Outcome::NotHere, "{state}");
        assert!(bed.cluster.steps().is_empty(), "{state}");
        assert!(bed.completions().is_empty());
    }
    // Auto Scaling cannot be asked: nothing touched, and said so.
    let bed = Bed::new();
    lock(&bed.asg.0).membership_fails = true;
    let outcome = bed.terminate(reaped(PEER, &[PEER_HOST])).await;
    assert_eq!(outcome, Outcome::NotCompleted);
    assert!(bed.cluster.steps().is_empty());
    assert!(
        bed.record(PEER).is_none(),
        "no record of a take-out not begun"
    );
}

/// A sweep killed between the take-out and the answer: the next sweep sends the instance
/// again from its record (its host removed, listed nowhere), and only the answer is left.
#[tokio::test(start_paused = true)]
async fn a_reap_resumed_from_its_record_only_completes_the_action() {
    let bed = Bed::new();
    bed.asg.place(PEER, GROUP, "Terminating:Wait");
    bed.records().save(&TakeOutRecord {
        instance_id: PEER.into(),
        host_id: Some(PEER_HOST.into()),
        group: Some(GROUP.into()),
        hook: Some(HOOK.into()),
        source: "reaper".into(),
        taken_out: true,
        ..TakeOutRecord::default()
    });
    let outcome = bed.terminate(reaped(PEER, &[PEER_HOST])).await;
    assert_eq!(outcome, Outcome::Done);
    assert!(bed.cluster.steps().is_empty(), "the host was out already");
    assert_eq!(bed.agent_stops(), 0, "not this host's agent");
    assert_eq!(
        bed.completions(),
        [completed(PEER, HOOK, LifecycleResult::Continue)]
    );
    assert!(bed.record(PEER).expect("record").finished());

    // Not out yet when it was killed: Auto Scaling is asked again before anything.
    let bed = Bed::new();
    bed.asg.place(PEER, GROUP, "InService");
    bed.records().save(&TakeOutRecord {
        instance_id: PEER.into(),
        host_id: Some(PEER_HOST.into()),
        source: "reaper".into(),
        ..TakeOutRecord::default()
    });
    assert_eq!(
        bed.terminate(reaped(PEER, &[PEER_HOST])).await,
        Outcome::NotHere
    );
    assert!(bed.cluster.steps().is_empty());
    assert!(bed.completions().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_reaper_never_takes_out_its_own_instance() {
    let bed = Bed::new();
    lock(&bed.asg.0).instances.remove(OWN);
    let outcome = bed.terminate(reaped(OWN, &[OWN_HOST])).await;
    assert_eq!(outcome, Outcome::NotHere);
    assert!(bed.cluster.steps().is_empty());
    assert_eq!(bed.asg.calls(), 0);
}

/// Two drovers (two consumers, each with its own state dir) reaping the same host at
/// once, or a reaper racing the host's own late drover: out once, completed once.
#[tokio::test(start_paused = true)]
async fn two_drovers_reaping_one_host_take_it_out_once_and_complete_once() {
    let first = Bed::new();
    lock(&first.cluster.0).step_time = Duration::from_secs(2);
    let mut second = Bed::new();
    second.cluster = first.cluster.clone();
    second.asg = first.asg.clone();
    second.settings.own_instance = STRANGER.into();
    let (a, b) = tokio::join!(
        first.terminate(reaped(PEER, &[PEER_HOST])),
        second.terminate(reaped(PEER, &[PEER_HOST]))
    );
    assert_eq!((a, b), (Outcome::Done, Outcome::Done));
    assert_eq!(first.cluster.state(PEER_HOST).as_deref(), Some("purged"));
    assert_eq!(
        first.completions(),
        [completed(PEER, HOOK, LifecycleResult::Continue)],
        "completed once"
    );

    // The host's own drover, late, and a reaper.
    let own = Bed::new();
    lock(&own.cluster.0).step_time = Duration::from_secs(2);
    let mut reaper = Bed::new();
    reaper.cluster = own.cluster.clone();
    reaper.asg = own.asg.clone();
    reaper.settings.own_instance = PEER.into();
    let (a, b) = tokio::join!(
        own.terminate(Termination::new(OWN, Source::ImdsTargetState)),
        reaper.terminate(reaped(OWN, &[OWN_HOST]))
    );
    assert_eq!((a, b), (Outcome::Done, Outcome::Done));
    assert_eq!(own.cluster.state(OWN_HOST).as_deref(), Some("purged"));
    assert_eq!(
        own.completions(),
        [completed(OWN, HOOK, LifecycleResult::Continue)]
    );
}

// ---- Warmed instances terminated from the pool ----

#[tokio::test(start_paused = true)]
async fn a_warmed_instance_of_this_group_terminating_without_a_host_is_let_go() {
    // From a sweep, which saw no host of it.
    let bed = Bed::new();
    bed.asg.place(STRANGER, GROUP, "Warmed:Terminating:Wait");
    let outcome = bed.terminate(reaped(STRANGER, &[])).await;
    assert_eq!(outcome, Outcome::Done);
    assert_eq!(
        bed.completions(),
        [completed(STRANGER, HOOK, LifecycleResult::Continue)]
    );
    assert!(bed.cluster.steps().is_empty());

    // From the queue: done here instead of handed back, and the message deleted.
    let bed = Bed::new();
    bed.asg.place(STRANGER, GROUP, "Warmed:Terminating:Wait");
    assert_eq!(bed.terminate(message(STRANGER)).await, Outcome::Done);
    assert_eq!(
        bed.completions(),
        [completed(STRANGER, HOOK, LifecycleResult::Continue)]
    );
}

#[tokio::test(start_paused = true)]
async fn only_this_groups_warmed_instances_in_that_state_are_let_go() {
    for (group, state) in [
        ("elsewhere", "Warmed:Terminating:Wait"),
        (GROUP, "Warmed:Stopped"),
        (GROUP, "Warmed:Pending:Wait"),
        (GROUP, "Terminating:Wait"),
    ] {
        for t in [message(STRANGER), reaped(STRANGER, &[])] {
            let bed = Bed::new();
            bed.asg.place(STRANGER, group, state);
            let mut t = t;
            if t.source == Source::Sqs {
                t.group = Some(group.into());
            }
            let outcome = bed.terminate(t).await;
            assert_eq!(outcome, Outcome::NotHere, "{group} {state}");
            assert!(bed.completions().is_empty(), "{group} {state}");
        }
    }
    // A warmed instance that has a host here is not let go this way: its message is
    // checked like any other, and the group shows it in no `Terminating` state.
    let bed = Bed::new();
    bed.asg.place(PEER, GROUP, "Warmed:Terminating:Wait");
    assert_eq!(bed.terminate(message(PEER)).await, Outcome::NotCompleted);
    assert!(bed.cluster.steps().is_empty());
    assert!(bed.completions().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_own_group_comes_from_auto_scaling_when_the_tags_do_not_say() {
    let mut bed = Bed::new();
    bed.settings.own_group = None;
    bed.asg.place(STRANGER, GROUP, "Warmed:Terminating:Wait");
    assert_eq!(bed.terminate(message(STRANGER)).await, Outcome::Done);
    assert_eq!(bed.completions().len(), 1);
}
