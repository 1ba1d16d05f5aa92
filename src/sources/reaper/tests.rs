//! The sweep's decisions over in-memory fakes of the cluster, Auto Scaling and the pager,
//! with the test itself as the consumer behind the door, in paused time. Each case checks
//! what its rule promises and fails when the rule is broken.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use super::*;
use crate::cluster::{AgentRegistration, ClusterError, ClusterHost, Step, StepDone, StepFailed};
use crate::lifecycle::{ActionRef, CallFailure, LifecycleHook, LifecycleResult, WarmedInstance};
use crate::metrics::Metrics;
use crate::pager::PagerError;
use crate::state::StateDir;

const OWN: &str = "i-00000000000000aaa";
const GROUP: &str = "crawlers";
const INTERVAL: Duration = Duration::from_secs(300);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- The cluster: one listing of the environment ----

#[derive(Default)]
struct ClusterState {
    hosts: Vec<EnvHost>,
    listings: usize,
    fails: bool,
    /// What a registration's listing saw before the reaper started.
    registration_listed: Option<usize>,
}

#[derive(Clone, Default)]
struct FakeCluster(Arc<Mutex<ClusterState>>);

impl FakeCluster {
    fn add(&self, id: &str, instance: Option<&str>, group: Option<&str>, agent: AgentContact) {
        lock(&self.0).hosts.push(EnvHost {
            id: id.into(),
            state: "active".into(),
            instance_id: instance.map(str::to_string),
            group: group.map(str::to_string),
            region: None,
            agent,
            hostname: None,
        });
    }

    fn listings(&self) -> usize {
        lock(&self.0).listings
    }
}

impl Cluster for FakeCluster {
    fn describe(&self) -> String {
        "fake cluster".into()
    }

    async fn find_hosts(
        &self,
        _instance_id: &str,
        _deadline: Instant,
    ) -> Result<Vec<ClusterHost>, ClusterError> {
        Err(ClusterError::OutOfTime(
            "a sweep lists the environment once, never per instance".into(),
        ))
    }

    fn connected_labelled_last_listed(&self) -> Option<usize> {
        lock(&self.0).registration_listed
    }

    async fn hosts(&self, _deadline: Instant) -> Result<Vec<EnvHost>, ClusterError> {
        let mut s = lock(&self.0);
        s.listings += 1;
        if s.fails {
            return Err(ClusterError::OutOfTime("listing hosts: no answer".into()));
        }
        Ok(s.hosts.clone())
    }

    async fn host(
        &self,
        _host_id: &str,
        _deadline: Instant,
    ) -> Result<Option<ClusterHost>, ClusterError> {
        Err(ClusterError::OutOfTime(
            "a sweep reads no single host".into(),
        ))
    }

    async fn registration(&self, _deadline: Instant) -> Result<AgentRegistration, ClusterError> {
        Err(ClusterError::OutOfTime("a sweep registers nothing".into()))
    }

    async fn take_step(
        &self,
        _host_id: &str,
        step: Step,
        _deadline: Instant,
    ) -> Result<StepDone, StepFailed> {
        Err(StepFailed {
            state: "unknown".into(),
            error: format!("a sweep takes no {step} step itself: the workflow does"),
            events: Vec::new(),
        })
    }
}

// ---- Auto Scaling ----

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct FakeError(String);

impl CallFailure for FakeError {
    fn is_transient(&self) -> bool {
        self.0.starts_with("Throttling")
    }
    fn is_no_active_action(&self) -> bool {
        false
    }
}

#[derive(Default)]
struct AsgState {
    /// Instance -> (group, state).
    instances: HashMap<String, (String, String)>,
    /// Every call of a method (`membership`, `memberships`, `warm_pool`) fails with this.
    failing: HashMap<&'static str, String>,
    /// (operation, how many instances it named).
    calls: Vec<(&'static str, usize)>,
}

#[derive(Clone, Default)]
struct FakeAsg(Arc<Mutex<AsgState>>);

impl FakeAsg {
    fn place(&self, instance: &str, group: &str, state: &str) {
        lock(&self.0)
            .instances
            .insert(instance.into(), (group.into(), state.into()));
    }

    fn fail(&self, operation: &'static str, error: &str) {
        lock(&self.0).failing.insert(operation, error.into());
    }

    fn calls(&self) -> Vec<(&'static str, usize)> {
        lock(&self.0).calls.clone()
    }

    fn call(
        &self,
        method: &'static str,
        operation: &'static str,
        named: usize,
    ) -> Result<(), FakeError> {
        let mut s = lock(&self.0);
        s.calls.push((operation, named));
        match s.failing.get(method) {
            Some(e) => Err(FakeError(e.clone())),
            None => Ok(()),
        }
    }

    fn member(&self, instance: &str) -> Option<GroupMembership> {
        lock(&self.0)
            .instances
            .get(instance)
            .filter(|(_, state)| !state.starts_with("Warmed:"))
            .map(|(group, state)| GroupMembership {
                group: group.clone(),
                lifecycle_state: Some(state.clone()),
            })
    }
}

impl LifecycleActions for FakeAsg {
    type Error = FakeError;

    async fn membership(&self, instance_id: &str) -> Result<Option<GroupMembership>, FakeError> {
        self.call("membership", "DescribeAutoScalingInstances", 1)?;
        Ok(self.member(instance_id))
    }

    async fn memberships(
        &self,
        instance_ids: &[String],
    ) -> Result<HashMap<String, GroupMembership>, FakeError> {
        self.call(
            "memberships",
            "DescribeAutoScalingInstances",
            instance_ids.len(),
        )?;
        Ok(instance_ids
            .iter()
            .filter_map(|i| Some((i.clone(), self.member(i)?)))
            .collect())
    }

    async fn warm_pool(&self, group: &str) -> Result<Vec<WarmedInstance>, FakeError> {
        self.call("warm_pool", "DescribeWarmPool", 0)?;
        let mut pool: Vec<WarmedInstance> = lock(&self.0)
            .instances
            .iter()
            .filter(|(_, (g, state))| g == group && state.starts_with("Warmed:"))
            .map(|(id, (_, state))| WarmedInstance {
                instance_id: id.clone(),
                lifecycle_state: Some(state.clone()),
            })
            .collect();
        pool.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        Ok(pool)
    }

    async fn hooks(&self, _group: &str) -> Result<Vec<LifecycleHook>, FakeError> {
        Err(FakeError(
            "a sweep reads no hooks: the workflow does".into(),
        ))
    }

    async fn complete(
        &self,
        _action: ActionRef<'_>,
        _result: LifecycleResult,
    ) -> Result<(), FakeError> {
        Err(FakeError(
            "a sweep completes nothing itself: the workflow does".into(),
        ))
    }

    async fn heartbeat(&self, _action: ActionRef<'_>) -> Result<(), FakeError> {
        Err(FakeError("a sweep sends no heartbeats".into()))
    }
}

// ---- The pager ----

#[derive(Clone, Default)]
struct FakePager(Arc<Mutex<Vec<Incident>>>);

impl FakePager {
    fn incidents(&self) -> Vec<Incident> {
        lock(&self.0).clone()
    }
}

impl Paging for FakePager {
    fn is_configured(&self) -> bool {
        true
    }

    async fn trigger(&self, incident: &Incident, _deadline: Instant) -> Result<(), PagerError> {
        lock(&self.0).push(incident.clone());
        Ok(())
    }

    async fn resolve(
        &self,
        _kind: IncidentKind,
        _instance_id: &str,
        _summary: &str,
        _deadline: Instant,
    ) -> Result<(), PagerError> {
        Ok(())
    }
}

// ---- The bed: the fakes, a state dir, and the test as the consumer ----

struct Bed {
    cluster: FakeCluster,
    asg: FakeAsg,
    pager: FakePager,
    dir: tempfile::TempDir,
    settings: Settings,
    /// The outcome the consumer answers for an instance (`Done` unless told).
    outcomes: Arc<Mutex<HashMap<String, Outcome>>>,
    /// Every termination that came through the door.
    received: Arc<Mutex<Vec<Termination>>>,
}

impl Bed {
    /// This instance in service in its group, with its own (connected) host.
    fn new() -> Bed {
        let bed = Bed {
            cluster: FakeCluster::default(),
            asg: FakeAsg::default(),
            pager: FakePager::default(),
            dir: tempfile::tempdir().expect("state dir"),
            settings: Settings {
                own_instance: OWN.into(),
                own_region: "us-east-1".into(),
                environment: "1a5".into(),
                interval: INTERVAL,
                max_per_sweep: 10,
                dry_run: false,
            },
            outcomes: Arc::default(),
            received: Arc::default(),
        };
        bed.asg.place(OWN, GROUP, "InService");
        bed.cluster
            .add("1h1", Some(OWN), Some(GROUP), AgentContact::Connected);
        bed
    }

    /// A disconnected host of instance `instance`, which Auto Scaling shows in `state`
    /// (`None`: it does not know it).
    fn dead(&self, host: &str, instance: &str, state: Option<&str>) {
        self.cluster.add(
            host,
            Some(instance),
            Some(GROUP),
            AgentContact::Disconnected,
        );
        if let Some(state) = state {
            self.asg.place(instance, GROUP, state);
        }
    }

    fn records(&self) -> Records {
        Records::new(StateDir::new(self.dir.path()))
    }

    fn reaper(&self) -> Reaper<FakeCluster, FakeAsg, FakePager> {
        Reaper::new(
            self.settings.clone(),
            self.cluster.clone(),
            self.asg.clone(),
            self.pager.clone(),
            self.records(),
        )
    }

    /// The door, with the test answering behind it.
    fn door(&self) -> mpsc::Sender<Work> {
        let (tx, mut rx) = mpsc::channel::<Work>(64);
        let outcomes = self.outcomes.clone();
        let received = self.received.clone();
        tokio::spawn(async move {
            while let Some(work) = rx.recv().await {
                if let Work::Terminate { termination, reply } = work {
                    let outcome = lock(&outcomes)
                        .get(&termination.instance_id)
                        .copied()
                        .unwrap_or(Outcome::Done);
                    lock(&received).push(termination);
                    if let Some(reply) = reply {
                        let _ = reply.send(outcome);
                    }
                }
            }
        });
        tx
    }

    async fn sweep(&self) -> SweepReport {
        self.reaper()
            .sweep(&self.door(), &CancellationToken::new())
            .await
    }

    fn received(&self) -> Vec<String> {
        lock(&self.received)
            .iter()
            .map(|t| t.instance_id.clone())
            .collect()
    }

    fn answer(&self, instance: &str, outcome: Outcome) {
        lock(&self.outcomes).insert(instance.into(), outcome);
    }
}

fn decision_of<'a>(report: &'a SweepReport, host: &str) -> &'a Decision {
    &report
        .hosts
        .iter()
        .find(|h| h.host_id == host)
        .unwrap_or_else(|| panic!("host {host} in the report"))
        .decision
}

fn left(report: &SweepReport, host: &str) -> bool {
    matches!(decision_of(report, host), Decision::Leave(_))
}

// ---- What is reaped ----

#[tokio::test(start_paused = true)]
async fn only_disconnected_hosts_of_gone_or_terminating_instances_are_reaped() {
    let bed = Bed::new();
    bed.dead("1h2", "i-gone", None);
    bed.dead("1h3", "i-partitioned", Some("InService"));
    bed.dead("1h4", "i-waiting", Some("Terminating:Wait"));
    bed.dead("1h5", "i-terminating", Some("Terminating"));
    bed.dead("1h6", "i-answered", Some("Terminating:Proceed"));
    bed.dead("1h7", "i-standby", Some("Standby"));
    // Connected, though Auto Scaling does not know it (a host outside every group).
    bed.cluster.add(
        "1h8",
        Some("i-unknown"),
        Some(GROUP),
        AgentContact::Connected,
    );
    bed.cluster.add(
        "1h9",
        Some("i-back-soon"),
        Some(GROUP),
        AgentContact::Reconnecting,
    );
    // A manual host without labels, and one without its group label.
    bed.cluster
        .add("1h10", None, None, AgentContact::Disconnected);
    bed.cluster.add(
        "1h11",
        Some("i-groupless"),
        None,
        AgentContact::Disconnected,
    );
    // This instance's own (old) host, disconnected.
    bed.cluster
        .add("1h12", Some(OWN), Some(GROUP), AgentContact::Disconnected);
    // An instance with a stale dead host and a live one.
    bed.cluster.add(
        "1h13",
        Some("i-reborn"),
        Some(GROUP),
        AgentContact::Disconnected,
    );
    bed.cluster.add(
        "1h14",
        Some("i-reborn"),
        Some(GROUP),
        AgentContact::Connected,
    );

    let report = bed.sweep().await;

    assert_eq!(report.refused, None);
    let mut sent = bed.received();
    sent.sort();
    assert_eq!(sent, ["i-gone", "i-terminating", "i-waiting"]);
    for host in ["1h2", "1h4", "1h5"] {
        assert_eq!(decision_of(&report, host), &Decision::Reaped, "{host}");
    }
    for host in [
        "1h1", "1h3", "1h6", "1h7", "1h8", "1h9", "1h10", "1h11", "1h12", "1h13", "1h14",
    ] {
        assert!(
            left(&report, host),
            "{host}: {:?}",
            decision_of(&report, host)
        );
    }
    // The evidence: the agent as Rancher said it, Auto Scaling's answer.
    let gone = report
        .hosts
        .iter()
        .find(|h| h.host_id == "1h2")
        .expect("1h2");
    assert_eq!(gone.agent, AgentContact::Disconnected);
    assert!(
        gone.autoscaling
            .as_deref()
            .is_some_and(|a| a.contains("not known")),
        "{gone:?}"
    );
    let partitioned = report
        .hosts
        .iter()
        .find(|h| h.host_id == "1h3")
        .expect("1h3");
    assert_eq!(
        partitioned.autoscaling.as_deref(),
        Some("InService in group crawlers")
    );
    // Only the disconnected, labelled hosts of other instances were asked about, in one
    // call; the connected one never was.
    let described: Vec<usize> = bed
        .asg
        .calls()
        .into_iter()
        .filter(|(op, n)| *op == "DescribeAutoScalingInstances" && *n > 1)
        .map(|(_, n)| n)
        .collect();
    assert_eq!(described, [6], "{:?}", bed.asg.calls());
    assert_eq!(bed.cluster.listings(), 1, "one host listing a sweep");
    assert!(report.succeeded());
}

#[tokio::test(start_paused = true)]
async fn a_dead_host_of_another_region_is_left_alone() {
    // One Rancher environment across two regions: Auto Scaling here knows nothing of the
    // other region's instances, which is not their being gone (a partition between that
    // region and Rancher looks just like this).
    let bed = Bed::new();
    let in_region = |host: &str, instance: &str, region: Option<&str>| {
        bed.dead(host, instance, None);
        let mut s = lock(&bed.cluster.0);
        let h = s.hosts.iter_mut().find(|h| h.id == host).expect("added");
        h.region = region.map(str::to_string);
    };
    in_region("1h2", "i-here-gone", Some("us-east-1"));
    in_region("1h3", "i-elsewhere", Some("eu-west-1"));
    in_region("1h4", "i-unlabelled-gone", None);

    let report = bed.sweep().await;

    let mut sent = bed.received();
    sent.sort();
    assert_eq!(sent, ["i-here-gone", "i-unlabelled-gone"]);
    match decision_of(&report, "1h3") {
        Decision::Leave(why) => assert!(
            why.contains("eu-west-1") && why.contains("us-east-1"),
            "{why}"
        ),
        other => panic!("1h3: {other:?}"),
    }
    assert!(report.succeeded());
}

#[tokio::test(start_paused = true)]
async fn each_termination_carries_its_hosts_and_group_and_comes_from_the_reaper() {
    let bed = Bed::new();
    // Two dead hosts of one instance (a registration that ran twice): one termination.
    bed.dead("1h2", "i-gone", None);
    bed.dead("1h3", "i-gone", None);
    bed.sweep().await;
    let received = lock(&bed.received).clone();
    assert_eq!(received.len(), 1, "{received:?}");
    let t = &received[0];
    assert_eq!(t.source, Source::Reaper);
    assert_eq!(t.group.as_deref(), Some(GROUP));
    assert_eq!(
        t.hosts.as_deref(),
        Some(&["1h2".to_string(), "1h3".to_string()][..])
    );
}

#[tokio::test(start_paused = true)]
async fn reaps_and_sweeps_are_counted() {
    let bed = Bed::new();
    bed.dead("1h2", "i-gone", None);
    bed.dead("1h4", "i-waiting", Some("Terminating:Wait"));
    bed.dead("1h3", "i-partitioned", Some("InService"));
    bed.answer("i-waiting", Outcome::FailedButCompleted);
    let dir = tempfile::tempdir().expect("metrics dir");
    let path = dir.path().join("drover.prom");
    let reaper = bed.reaper().with_metrics(Metrics::to_textfile(Some(&path)));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    reaper.sweep(&bed.door(), &CancellationToken::new()).await;
    lock(&bed.asg.0).instances.remove(OWN);
    reaper.sweep(&bed.door(), &CancellationToken::new()).await;
    let text = std::fs::read_to_string(&path).expect("textfile");
    for line in [
        "drover_reaps_total{outcome=\"reaped\"} 1",
        "drover_reaps_total{outcome=\"failed\"} 1",
        "drover_reaper_sweeps_total{outcome=\"swept\"} 1",
        "drover_reaper_sweeps_total{outcome=\"refused\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} not in:\n{text}");
    }
    // The host left alone is no reap.
    assert_eq!(text.matches("drover_reaps_total{").count(), 2, "{text}");
    let last: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("drover_reaper_last_sweep_timestamp_seconds "))
        .expect("the gauge")
        .parse()
        .expect("a number");
    assert!(last >= before.floor(), "{last} < {before}");
}

// ---- Safety ----

#[tokio::test(start_paused = true)]
async fn a_sweep_is_refused_when_auto_scaling_does_not_know_this_instance() {
    let bed = Bed::new();
    lock(&bed.asg.0).instances.remove(OWN);
    bed.dead("1h2", "i-gone", None);
    let report = bed.sweep().await;
    let why = report.refused.clone().expect("refused");
    assert!(why.contains("does not know this instance"), "{why}");
    assert!(bed.received().is_empty());
    assert_eq!(bed.cluster.listings(), 0, "refused before listing anything");
    assert!(!report.succeeded());
    let record = bed.records().last_sweep().expect("the sweep is recorded");
    assert_eq!(record.refused, Some(why));
}

#[tokio::test(start_paused = true)]
async fn auto_scaling_errors_and_throttling_mean_nothing_this_time() {
    for (why, op) in [
        ("Throttling: Rate exceeded", "membership"),
        ("AccessDenied: not allowed", "membership"),
        ("Throttling: Rate exceeded", "memberships"),
        ("InternalFailure: try again", "memberships"),
    ] {
        let bed = Bed::new();
        bed.dead("1h2", "i-gone", None);
        bed.asg.fail(op, why);
        let report = bed.sweep().await;
        assert!(report.refused.is_some(), "{why}");
        assert!(bed.received().is_empty(), "{why}: nothing is gone");
    }
    // This instance answered, the batch about the others did not: still nothing.
    let bed = Bed::new();
    bed.dead("1h2", "i-gone", None);
    bed.asg.fail("memberships", "Throttling: Rate exceeded");
    let report = bed.sweep().await;
    assert!(report
        .refused
        .as_deref()
        .is_some_and(|w| w.contains("disconnected hosts' instances") && w.contains("Throttling")));
    assert!(bed.received().is_empty());
    assert!(report.hosts.is_empty(), "a refused sweep decides nothing");
}

#[tokio::test(start_paused = true)]
async fn a_failed_listing_refuses_the_sweep() {
    let bed = Bed::new();
    bed.dead("1h2", "i-gone", None);
    lock(&bed.cluster.0).fails = true;
    let report = bed.sweep().await;
    assert!(report
        .refused
        .as_deref()
        .is_some_and(|w| w.contains("listing")));
    assert!(bed.received().is_empty());
}

#[tokio::test(start_paused = true)]
async fn more_candidates_than_the_cap_page_once_and_take_out_the_first() {
    let mut bed = Bed::new();
    bed.settings.max_per_sweep = 2;
    for n in 2..7 {
        bed.dead(&format!("1h{n}"), &format!("i-dead{n}"), None);
    }
    let report = bed.sweep().await;
    assert_eq!(bed.received(), ["i-dead2", "i-dead3"]);
    for host in ["1h4", "1h5", "1h6"] {
        assert_eq!(decision_of(&report, host), &Decision::Deferred);
    }
    let incidents = bed.pager.incidents();
    assert_eq!(incidents.len(), 1, "one page for the sweep");
    let page = &incidents[0];
    assert_eq!(page.kind, IncidentKind::Reap);
    assert_eq!(page.instance_id, "1a5", "about the environment");
    assert!(
        page.error.contains("5 disconnected hosts"),
        "{}",
        page.error
    );
    let listed: Vec<&str> = page.timeline.iter().map(|(_, e)| e.as_str()).collect();
    assert_eq!(listed.len(), 5, "{listed:?}");
    for n in 2..7 {
        assert!(
            listed.iter().any(|e| e.contains(&format!("i-dead{n}"))),
            "{listed:?}"
        );
    }
    assert!(report.paged);
    let record = bed.records().last_sweep().expect("recorded");
    assert_eq!(record.deferred, ["i-dead4", "i-dead5", "i-dead6"]);
    assert_eq!(record.reaped, ["i-dead2", "i-dead3"]);
    assert!(record.paged);

    // As many as the cap: no page.
    let mut bed = Bed::new();
    bed.settings.max_per_sweep = 2;
    bed.dead("1h2", "i-dead2", None);
    bed.dead("1h3", "i-dead3", Some("Terminating:Wait"));
    bed.sweep().await;
    assert_eq!(bed.received().len(), 2);
    assert!(bed.pager.incidents().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_dry_run_changes_nothing_and_says_what_it_would_do() {
    let mut bed = Bed::new();
    bed.settings.dry_run = true;
    bed.settings.max_per_sweep = 1;
    bed.dead("1h2", "i-gone", None);
    bed.dead("1h3", "i-waiting", Some("Terminating:Wait"));
    bed.asg.place("i-warm", GROUP, WARMED_TERMINATING_WAIT);
    let report = bed.sweep().await;
    assert!(bed.received().is_empty(), "nothing sent");
    assert!(bed.pager.incidents().is_empty(), "no page from a dry run");
    assert_eq!(decision_of(&report, "1h2"), &Decision::WouldReap);
    assert_eq!(decision_of(&report, "1h3"), &Decision::Deferred);
    assert_eq!(report.warm[0].decision, Decision::WouldReap);
    assert_eq!(report.warm[0].decision.word(true), "would-complete");
    assert!(report.succeeded());
    let record = bed.records().last_sweep().expect("recorded");
    assert!(record.dry_run);
    assert_eq!(record.reaped, ["i-gone"]);
}

#[tokio::test(start_paused = true)]
async fn failed_and_unconfirmed_take_outs_are_told_apart() {
    let bed = Bed::new();
    bed.dead("1h2", "i-failing", None);
    bed.dead("1h3", "i-came-back", None);
    bed.answer("i-failing", Outcome::FailedButCompleted);
    bed.answer("i-came-back", Outcome::NotHere);
    let report = bed.sweep().await;
    assert!(matches!(decision_of(&report, "1h2"), Decision::Failed(_)));
    assert_eq!(decision_of(&report, "1h3"), &Decision::NotConfirmed);
    assert!(!report.succeeded(), "a failed take-out fails the sweep");
    let record = bed.records().last_sweep().expect("recorded");
    assert_eq!(record.failed, ["i-failing"]);
}

#[tokio::test(start_paused = true)]
async fn a_stop_ends_the_wait_for_the_work() {
    let bed = Bed::new();
    bed.dead("1h2", "i-gone", None);
    // A door nobody answers behind.
    let (tx, _rx) = mpsc::channel::<Work>(8);
    let cancel = CancellationToken::new();
    let reaper = bed.reaper();
    let sweep = reaper.sweep(&tx, &cancel);
    tokio::pin!(sweep);
    tokio::select! {
        _ = &mut sweep => panic!("a sweep with no answer ended on its own"),
        () = tokio::time::sleep(Duration::from_secs(3600)) => {}
    }
    cancel.cancel();
    let report = sweep.await;
    assert_eq!(decision_of(&report, "1h2"), &Decision::Interrupted);
}

// ---- What an earlier sweep left unfinished ----

/// A take-out record of `instance` from `source`, begun `age` ago.
fn take_out_record(
    instance: &str,
    host: Option<&str>,
    source: &str,
    halves: (bool, bool),
    age: Duration,
) -> crate::state::TakeOutRecord {
    let began = std::time::SystemTime::now() - age;
    crate::state::TakeOutRecord {
        instance_id: instance.into(),
        host_id: host.map(str::to_string),
        group: Some(GROUP.into()),
        hook: Some("drain".into()),
        source: source.into(),
        started_at: humantime::format_rfc3339_seconds(began).to_string(),
        taken_out: halves.0,
        hook_completed: halves.1,
        ..crate::state::TakeOutRecord::default()
    }
}

/// The state dir of a drover killed mid-take-out, and of what must not be resumed.
fn unfinished_records(bed: &Bed) {
    let records = bed.records();
    let minute = Duration::from_secs(60);
    // Killed between the take-out and the answer: the host removed, so out of every
    // listing, its instance's action still waiting.
    records.save(&take_out_record(
        "i-removed",
        Some("1h7"),
        "reaper",
        (true, false),
        minute,
    ));
    // Done: nothing left.
    records.save(&take_out_record(
        "i-done",
        Some("1h8"),
        "reaper",
        (true, true),
        minute,
    ));
    // Another source's: the queue brings its message back.
    records.save(&take_out_record(
        "i-by-queue",
        Some("1h9"),
        "sqs",
        (true, false),
        minute,
    ));
    // Older than any lifecycle action lives.
    let days = Duration::from_secs(3 * 24 * 3600);
    records.save(&take_out_record(
        "i-ancient",
        Some("1h10"),
        "reaper",
        (true, false),
        days,
    ));
    // Still listed: the listing decides about it, once.
    bed.dead("1h11", "i-listed", None);
    records.save(&take_out_record(
        "i-listed",
        Some("1h11"),
        "reaper",
        (false, false),
        minute,
    ));
}

#[tokio::test(start_paused = true)]
async fn a_take_out_an_earlier_sweep_left_unfinished_is_finished_though_its_host_is_not_listed() {
    let bed = Bed::new();
    unfinished_records(&bed);
    let report = bed.sweep().await;
    let mut sent = bed.received();
    sent.sort();
    assert_eq!(sent, ["i-listed", "i-removed"], "each once, nothing else");
    assert_eq!(report.resumed.len(), 1, "{:?}", report.resumed);
    let r = &report.resumed[0];
    assert_eq!(
        (r.instance_id.as_str(), &r.hosts[..], &r.decision),
        ("i-removed", &["1h7".to_string()][..], &Decision::Reaped)
    );
    let received = lock(&bed.received).clone();
    let t = received
        .iter()
        .find(|t| t.instance_id == "i-removed")
        .expect("sent");
    assert_eq!(t.source, Source::Reaper);
    assert_eq!(t.group.as_deref(), Some(GROUP));
    assert_eq!(t.hosts.as_deref(), Some(&["1h7".to_string()][..]));
    assert_eq!(decision_of(&report, "1h11"), &Decision::Reaped);
    assert!(report.succeeded());
    let record = bed.records().last_sweep().expect("recorded");
    assert_eq!(record.reaped, ["i-listed", "i-removed"]);
    assert!(
        record
            .considered
            .iter()
            .any(|c| c.instance_id.as_deref() == Some("i-removed") && c.agent == "not listed"),
        "{:?}",
        record.considered
    );
}

#[tokio::test(start_paused = true)]
async fn an_unfinished_take_out_is_only_told_of_in_a_dry_run_and_fails_the_sweep_when_it_fails() {
    let mut bed = Bed::new();
    unfinished_records(&bed);
    bed.settings.dry_run = true;
    let report = bed.sweep().await;
    assert!(bed.received().is_empty(), "a dry run sends nothing");
    assert_eq!(report.resumed[0].decision, Decision::WouldReap);

    bed.settings.dry_run = false;
    bed.answer("i-removed", Outcome::NotCompleted);
    let report = bed.sweep().await;
    assert!(matches!(report.resumed[0].decision, Decision::Failed(_)));
    assert!(
        !report.succeeded(),
        "a resumed take-out that fails fails the sweep"
    );
    assert_eq!(
        bed.records().last_sweep().expect("recorded").failed,
        ["i-removed"]
    );
}

// ---- The warm pool ----

#[tokio::test(start_paused = true)]
async fn warmed_instances_waiting_to_terminate_without_a_host_are_let_go() {
    let bed = Bed::new();
    bed.asg.place("i-warm-wait", GROUP, WARMED_TERMINATING_WAIT);
    bed.asg.place("i-warm-stopped", GROUP, "Warmed:Stopped");
    bed.asg
        .place("i-warm-other", "elsewhere", WARMED_TERMINATING_WAIT);
    // Waiting, but a host of this environment carries it: the take-out's business.
    bed.asg
        .place("i-warm-hosted", GROUP, WARMED_TERMINATING_WAIT);
    bed.cluster.add(
        "1h2",
        Some("i-warm-hosted"),
        Some(GROUP),
        AgentContact::Connected,
    );
    let report = bed.sweep().await;
    let received = lock(&bed.received).clone();
    assert_eq!(received.len(), 1, "{received:?}");
    assert_eq!(received[0].instance_id, "i-warm-wait");
    assert_eq!(received[0].group.as_deref(), Some(GROUP));
    assert_eq!(received[0].hosts.as_deref(), Some(&[][..]));
    let decisions: HashMap<&str, &Decision> = report
        .warm
        .iter()
        .map(|w| (w.instance_id.as_str(), &w.decision))
        .collect();
    assert_eq!(decisions.len(), 3, "only this group's pool: {decisions:?}");
    assert_eq!(decisions["i-warm-wait"], &Decision::Reaped);
    assert!(matches!(decisions["i-warm-stopped"], Decision::Leave(_)));
    assert!(matches!(decisions["i-warm-hosted"], Decision::Leave(_)));
    let pools: Vec<_> = bed
        .asg
        .calls()
        .into_iter()
        .filter(|(op, _)| *op == "DescribeWarmPool")
        .collect();
    assert_eq!(pools.len(), 1);
    let record = bed.records().last_sweep().expect("recorded");
    assert_eq!(record.warm_pool_completed, ["i-warm-wait"]);
}

#[tokio::test(start_paused = true)]
async fn a_warm_pool_that_cannot_be_read_leaves_the_hosts_sweep_standing() {
    let bed = Bed::new();
    bed.dead("1h2", "i-gone", None);
    bed.asg
        .fail("warm_pool", "AccessDenied: autoscaling:DescribeWarmPool");
    let report = bed.sweep().await;
    assert_eq!(bed.received(), ["i-gone"]);
    assert!(report
        .warm_error
        .as_deref()
        .is_some_and(|e| e.contains("DescribeWarmPool")));
    assert!(report.succeeded());
}

// ---- Scheduling ----

#[test]
fn the_wait_is_spread_over_the_fleet_and_never_shorter_than_the_interval() {
    let mut rng = StdRng::seed_from_u64(7);
    assert_eq!(next_wait(INTERVAL, Some(1), &mut rng), INTERVAL);
    assert_eq!(next_wait(INTERVAL, Some(0), &mut rng), INTERVAL);
    for (labelled, most) in [(None, 2), (Some(2), 2), (Some(10), 10), (Some(50), 50)] {
        let waits: Vec<Duration> = (0..4000)
            .map(|_| next_wait(INTERVAL, labelled, &mut rng))
            .collect();
        let longest = INTERVAL * most;
        assert!(
            waits.iter().all(|w| *w >= INTERVAL && *w <= longest),
            "{labelled:?}"
        );
        // Spread over the whole range, not bunched at one end.
        let mean = waits.iter().sum::<Duration>() / 4000;
        let expected = INTERVAL * (most + 1) / 2;
        let off = mean.abs_diff(expected).as_secs_f64() / expected.as_secs_f64();
        assert!(
            off < 0.05,
            "{labelled:?}: mean {mean:?}, expected {expected:?}"
        );
    }
    // A fleet far larger than any wait's cap still waits a bounded time.
    let huge = next_wait(
        Duration::from_secs(7 * 24 * 3600),
        Some(1_000_000),
        &mut rng,
    );
    assert!(huge <= MAX_WAIT);
}

/// The arithmetic of the module docs, simulated: N drovers, each waiting by `next_wait`
/// from its last listing, make fewer than 2 listings an interval together, for any N.
#[test]
fn a_fleet_lists_the_environment_less_than_twice_an_interval_whatever_its_size() {
    let mut rng = StdRng::seed_from_u64(11);
    for n in [1usize, 2, 10, 50, 200] {
        // Long enough for every drover to sweep about a hundred times, so that the start
        // (all at once) weighs little.
        let intervals = 50 * (n as u32 + 1);
        let horizon = INTERVAL * intervals;
        let mut sweeps = 0u64;
        for _ in 0..n {
            let mut t = Duration::ZERO;
            loop {
                t += next_wait(INTERVAL, Some(n), &mut rng);
                if t > horizon {
                    break;
                }
                sweeps += 1;
            }
        }
        let per_interval = sweeps as f64 / f64::from(intervals);
        let expected = 2.0 * n as f64 / (n as f64 + 1.0);
        assert!(
            per_interval < 2.0 && (per_interval - expected).abs() < 0.1,
            "N={n}: {per_interval} listings an interval, expected about {expected}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_first_sweep_waits_an_interval_and_a_stop_ends_the_wait() {
    let bed = Bed::new();
    bed.dead("1h2", "i-gone", None);
    let intake = CancellationToken::new();
    let task = tokio::spawn(watch(bed.reaper(), bed.door(), intake.clone()));
    tokio::time::sleep(INTERVAL - Duration::from_secs(1)).await;
    assert_eq!(bed.cluster.listings(), 0, "no sweep before one interval");
    // No record yet: the first sweep comes within two intervals.
    tokio::time::sleep(INTERVAL + Duration::from_secs(2)).await;
    assert_eq!(bed.cluster.listings(), 1);
    assert_eq!(bed.received(), ["i-gone"]);
    // Two labelled hosts: the next one within [interval, 2 intervals] of the first.
    intake.cancel();
    tokio::time::timeout(Duration::from_millis(1), task)
        .await
        .expect("the stop ends the wait at once")
        .expect("the reaper ends cleanly");
}

/// The minutes of the first `sweeps` sweeps of a reaper started on `bed` (40 intervals each
/// at most).
async fn sweep_minutes(bed: &Bed, sweeps: usize) -> Vec<u32> {
    let intake = CancellationToken::new();
    let task = tokio::spawn(watch(bed.reaper(), bed.door(), intake.clone()));
    let mut minutes = Vec::new();
    for minute in 1..=(40 * 5 * u32::try_from(sweeps).expect("a few") + 1) {
        tokio::time::sleep(Duration::from_secs(60)).await;
        while bed.cluster.listings() > minutes.len() {
            minutes.push(minute);
        }
        if minutes.len() >= sweeps {
            break;
        }
    }
    intake.cancel();
    task.await.expect("ends");
    assert!(minutes.len() >= sweeps, "sweeps at minutes {minutes:?}");
    minutes
}

/// The minute of the first sweep of a reaper started on `bed`.
async fn first_sweep_minute(bed: &Bed) -> u32 {
    sweep_minutes(bed, 1).await[0]
}

#[tokio::test(start_paused = true)]
async fn the_last_listing_in_the_state_dir_spreads_the_first_sweep() {
    let bed = Bed::new();
    bed.records().save_sweep(&SweepRecord {
        labelled_hosts: 45,
        connected_labelled_hosts: 40,
        ..SweepRecord::default()
    });
    let first = first_sweep_minute(&bed).await;
    assert!(
        (5..=200).contains(&first),
        "first sweep after {first} minutes"
    );
}

#[tokio::test(start_paused = true)]
async fn a_fresh_reaper_spreads_its_first_sweep_over_what_the_registration_listed() {
    // A fleet of 40 started at once: no state dir record, but the registration listed 40.
    // Twenty fresh reapers: were they to assume a fleet of 2, all would sweep within two
    // intervals (10 minutes); spread over 40 intervals, about one in 39 does.
    let mut early = 0;
    for _ in 0..20 {
        let bed = Bed::new();
        lock(&bed.cluster.0).registration_listed = Some(40);
        let first = first_sweep_minute(&bed).await;
        assert!(
            (5..=200).contains(&first),
            "first sweep after {first} minutes"
        );
        if first <= 10 {
            early += 1;
        }
    }
    assert!(
        early <= 5,
        "{early} of 20 fresh reapers swept within two intervals"
    );
}

#[tokio::test(start_paused = true)]
async fn the_wait_is_spread_over_the_connected_labelled_hosts_only() {
    // Two drovers (this one and a peer) among 38 hosts behind a partition: the survivors of
    // a mass death, say. The 38 run no drover that can sweep; spread over 40, the second
    // sweep would come within two intervals of the first about one time in 39.
    for _ in 0..10 {
        let bed = Bed::new();
        bed.cluster
            .add("1h2", Some("i-peer"), Some(GROUP), AgentContact::Connected);
        bed.asg.place("i-peer", GROUP, "InService");
        for k in 0..38 {
            let instance = format!("i-partitioned{k}");
            bed.dead(&format!("1h{}", 10 + k), &instance, Some("InService"));
        }
        let minutes = sweep_minutes(&bed, 2).await;
        let gap = minutes[1] - minutes[0];
        assert!(
            (5..=11).contains(&gap),
            "second sweep {gap} minutes after the first"
        );
        let record = bed.records().last_sweep().expect("a sweep record");
        assert_eq!(
            (record.labelled_hosts, record.connected_labelled_hosts),
            (40, 2)
        );
        assert!(bed.received().is_empty(), "nothing taken out");
    }
}

#[test]
fn the_first_wait_counts_the_registration_listing_before_the_state_dir() {
    assert_eq!(
        first_fleet_size(Some(50), Some(3)),
        Some(50),
        "the fresher count"
    );
    assert_eq!(first_fleet_size(None, Some(3)), Some(3));
    assert_eq!(
        first_fleet_size(Some(0), Some(3)),
        Some(3),
        "no labelled host seen"
    );
    assert_eq!(first_fleet_size(Some(0), Some(0)), None);
    assert_eq!(first_fleet_size(None, None), None);
}

#[tokio::test(start_paused = true)]
async fn a_stop_during_a_sweep_ends_it_at_once() {
    let bed = Bed::new();
    bed.dead("1h2", "i-gone", None);
    let (tx, _rx) = mpsc::channel::<Work>(8);
    let intake = CancellationToken::new();
    let task = tokio::spawn(watch(bed.reaper(), tx, intake.clone()));
    // Past the first sweep's start: it waits for an answer that never comes.
    tokio::time::sleep(INTERVAL * 2 + Duration::from_secs(1)).await;
    assert_eq!(bed.cluster.listings(), 1);
    intake.cancel();
    tokio::time::timeout(Duration::from_millis(1), task)
        .await
        .expect("the stop is not held up by the sweep")
        .expect("ends");
}
