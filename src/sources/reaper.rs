//! The reaper source: sweeps the environment for hosts whose instance died without a clean
//! stop (a kernel panic, a hardware failure, an instance terminated through EC2 itself, an
//! Availability Zone lost, a drover that died) and sends each through the one door as a
//! termination like any other, so that it gets the workflow's take-out: the same steps,
//! records, idempotence, lifecycle action and pages. It also lets go of warmed instances
//! terminated from this drover's own warm pool, which nothing else can answer for.
//!
//! # What is reaped
//!
//! A host is reaped only when all of these hold: it is in this environment's listing, it
//! carries both `aws.instance_id` and `aws.autoscaling_group`, it is not this instance's,
//! Rancher shows its agent `disconnected` (not `reconnecting`: a restart or a short
//! partition), no other host of the same instance is connected, its `aws.region` label (if
//! any) is this instance's region (Auto Scaling here cannot speak for another's), and Auto
//! Scaling either no longer knows the instance or shows it `Terminating` /
//! `Terminating:Wait`. Anything else is left alone, and the workflow asks Auto Scaling once
//! more before it acts.
//!
//! Before anything, a sweep asks Auto Scaling about this very instance: when it does not
//! know it (wrong region, account or credentials, an instance outside any group) every
//! other instance would look "gone", so the sweep is refused. An Auto Scaling error or
//! throttling means "nothing this time", never "gone". At most `max_per_sweep` take-outs
//! a sweep; more candidates than that page once, with the list, and the first
//! `max_per_sweep` are taken out (the rest in later sweeps).
//!
//! A sweep also finishes what an earlier sweep of this drover began and did not finish (it
//! was killed, stopped, or could not complete the lifecycle action): a host once removed
//! drops out of every listing, so no sweep would find it again, and its instance's action
//! would wait out its whole timeout. The take-out record in the state dir tells of it; the
//! workflow picks up where the record left off (confirming with Auto Scaling again when the
//! host was not out yet).
//!
//! # One sweep per interval for the whole fleet
//!
//! Every drover sweeps, with one host listing a sweep, and each waits between its sweeps a
//! time drawn uniformly from `[interval, N × interval]`, where N is the number of labelled
//! hosts in its last listing whose agent is connected (each of them runs a drover; a dead
//! host, disconnected, runs none, and counting it would slow the survivors down just when
//! hosts die): never less than `interval`, and the first sweep no sooner than `interval`
//! after the reaper starts. A drover then sweeps on average every `(N + 1) / 2 × interval`,
//! and the N drovers together `N / ((N + 1) / 2 × interval) = 2N / (N + 1)` times an
//! interval: one for a single host, approaching but never reaching 2 for any fleet size.
//! Their sweeps are independent, so for a large fleet they come close to a Poisson stream of
//! rate `2 / interval`: a host that died waits for the next sweep about `interval / 2` on
//! average, at most one interval in 86% of cases (1 - e^-2) and at most three in 99.75%
//! (1 - e^-6).
//!
//! The first wait's N is the registration's own listing of the environment (it lists every
//! host to find its own), else the last sweep's, kept in the state dir: so neither a fleet
//! started at once nor one restarted at once (an upgrade) sweeps at once. In a fleet started
//! at once the k-th host to register sees about k hosts and sweeps within two intervals with
//! chance `1 / (k - 1)`: the first two intervals hold about `1.6 + ln N` sweeps, not N. The
//! price: a first wait is uniform over `[interval, N × interval]`, so a fleet's first sweeps
//! come at about one an interval, not two, and a ghost already there when the whole fleet
//! starts is found within `N × interval` at the latest (the earliest of N first waits: about
//! two intervals on average for a large fleet).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::cluster::{AgentContact, Cluster, EnvHost};
use crate::lifecycle::{GroupMembership, LifecycleActions, WARMED_TERMINATING_WAIT};
use crate::metrics::{Event, Metrics, ReapOutcome};
use crate::pager::{Incident, IncidentKind, Paging, Severity};
use crate::state::{now_rfc3339, HostVerdictRecord, Records, SweepRecord};
use crate::work::{Outcome, Source, Termination, Work};
use crate::workflow::{reapable_state, PAGE_BUDGET};

/// Bound on each Auto Scaling call of a sweep (the SDK retries within it).
const ASK_BUDGET: Duration = Duration::from_secs(60);
/// Bound on the sweep's one host listing.
const LIST_BUDGET: Duration = Duration::from_secs(60);
/// The longest a drover waits between sweeps, however large the fleet: a year keeps every
/// `now + wait` a time.
const MAX_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);
/// The fleet size assumed before the first listing: a fresh drover's first sweep comes
/// within two intervals.
const FLEET_BEFORE_FIRST_LISTING: usize = 2;
/// How long an unfinished take-out of an earlier sweep is worth finishing: Auto Scaling
/// ends every lifecycle action within 48 hours, and by then a removed host is long purged.
const RESUME_FOR: Duration = Duration::from_secs(48 * 3600);

/// What the reaper needs to know, from the config and the instance.
#[derive(Debug, Clone)]
pub struct Settings {
    pub own_instance: String,
    /// This instance's region. Auto Scaling is asked in it (the sweep's own check makes
    /// sure), so it can speak only for instances of it: a disconnected host labelled with
    /// another region is left alone, for "unknown here" is not "gone".
    pub own_region: String,
    /// The Rancher environment (project) swept, for the page.
    pub environment: String,
    pub interval: Duration,
    pub max_per_sweep: usize,
    /// Decide and tell, change nothing.
    pub dry_run: bool,
}

/// The sweep over the cluster, Auto Scaling and the pager; the work goes through the door.
pub struct Reaper<C, L, P> {
    settings: Settings,
    cluster: C,
    asg: L,
    pager: P,
    records: Records,
    /// Where sweeps and reaps are counted; off unless [`Reaper::with_metrics`].
    metrics: Metrics,
}

/// What a sweep decided about a host (or a warmed instance), and, once the work ended, how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Left alone, and why.
    Leave(String),
    /// To be taken out (its lifecycle action completed).
    Reap,
    /// A candidate past `max_per_sweep`: for a later sweep.
    Deferred,
    /// Dry run: would have been taken out.
    WouldReap,
    /// Out, and its lifecycle action completed (or there was none).
    Reaped,
    /// The workflow did not act: Auto Scaling no longer confirmed it.
    NotConfirmed,
    /// Taking it out or completing its action failed (paged).
    Failed(String),
    /// The drover stopped before the work ended.
    Interrupted,
}

impl Decision {
    fn failed(&self) -> bool {
        matches!(self, Decision::Failed(_) | Decision::Interrupted)
    }

    /// The first word of a `drover reap` line: for a host, or for a warmed instance.
    pub fn word(&self, warm: bool) -> &'static str {
        match (self, warm) {
            (Decision::Leave(_), _) => "left",
            (Decision::Reap, false) => "reap",
            (Decision::Reap, true) => "complete",
            (Decision::Deferred, _) => "deferred",
            (Decision::WouldReap, false) => "would-reap",
            (Decision::WouldReap, true) => "would-complete",
            (Decision::Reaped, false) => "reaped",
            (Decision::Reaped, true) => "completed",
            (Decision::NotConfirmed, _) => "left",
            (Decision::Failed(_), _) => "FAILED",
            (Decision::Interrupted, _) => "interrupted",
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Leave(why) => write!(f, "left alone: {why}"),
            Decision::Reap => f.write_str("to reap"),
            Decision::Deferred => {
                f.write_str("deferred: more candidates than reaper.max_per_sweep")
            }
            Decision::WouldReap => f.write_str("would reap (dry run)"),
            Decision::Reaped => f.write_str("reaped"),
            Decision::NotConfirmed => {
                f.write_str("left alone: Auto Scaling no longer confirmed it")
            }
            Decision::Failed(why) => write!(f, "failed: {why}"),
            Decision::Interrupted => f.write_str("interrupted by a stop"),
        }
    }
}

/// One host of the listing, its evidence and the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostVerdict {
    pub host_id: String,
    pub instance_id: Option<String>,
    pub group: Option<String>,
    pub agent: AgentContact,
    /// What Auto Scaling said of the instance, when it was asked.
    pub autoscaling: Option<String>,
    pub decision: Decision,
}

/// One instance of this drover's warm pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarmVerdict {
    pub instance_id: String,
    pub state: String,
    pub decision: Decision,
}

/// A take-out an earlier sweep of this drover began and did not finish, its instance no
/// longer in the listing (its hosts removed) nor in the warm pool: finished by this sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumedVerdict {
    pub instance_id: String,
    /// The hosts the earlier sweep took out, as its record names them.
    pub hosts: Vec<String>,
    pub group: Option<String>,
    /// When the earlier take-out began (RFC 3339).
    pub started_at: String,
    pub decision: Decision,
}

/// What one sweep saw, decided and did.
#[derive(Debug, Clone, Default)]
pub struct SweepReport {
    /// Why nothing was touched, when the sweep was refused.
    pub refused: Option<String>,
    pub hosts: Vec<HostVerdict>,
    pub warm: Vec<WarmVerdict>,
    /// Unfinished take-outs of earlier sweeps, finished by this one.
    pub resumed: Vec<ResumedVerdict>,
    /// Why the warm pool could not be read.
    pub warm_error: Option<String>,
    /// Labelled hosts in the listing; `None` when there was none.
    pub labelled: Option<usize>,
    /// Of those, the ones whose agent is connected: the drovers that sweep beside this one,
    /// as far as Rancher can tell (a dead host's runs none), which the next wait is spread
    /// over.
    pub connected_labelled: Option<usize>,
    pub paged: bool,
    pub dry_run: bool,
}

impl SweepReport {
    fn refused(why: String) -> SweepReport {
        SweepReport {
            refused: Some(why),
            ..SweepReport::default()
        }
    }

    /// Swept, and every take-out and completion it started ended well.
    pub fn succeeded(&self) -> bool {
        self.refused.is_none()
            && !self.hosts.iter().any(|h| h.decision.failed())
            && !self.warm.iter().any(|w| w.decision.failed())
            && !self.resumed.iter().any(|r| r.decision.failed())
    }

    /// The instances of the listing, and then the resumed ones, whose decision `pick`s.
    fn all_instances_with(&self, pick: impl Fn(&Decision) -> bool) -> Vec<String> {
        let mut out = self.instances_with(&pick);
        for r in self.resumed.iter().filter(|r| pick(&r.decision)) {
            if !out.contains(&r.instance_id) {
                out.push(r.instance_id.clone());
            }
        }
        out
    }

    fn instances_with(&self, pick: impl Fn(&Decision) -> bool) -> Vec<String> {
        let mut seen = HashSet::new();
        self.hosts
            .iter()
            .filter(|h| pick(&h.decision))
            .filter_map(|h| h.instance_id.clone())
            .filter(|i| seen.insert(i.clone()))
            .collect()
    }
}

/// How long to wait before the next sweep: uniform in `[interval, n × interval]` for the
/// `n` labelled hosts of the last listing (see the module docs for why), `interval` for one.
pub fn next_wait<R: Rng>(interval: Duration, labelled: Option<usize>, rng: &mut R) -> Duration {
    let n = labelled.unwrap_or(FLEET_BEFORE_FIRST_LISTING).max(1);
    let longest = interval
        .saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
        .min(MAX_WAIT)
        .max(interval);
    if longest == interval {
        return interval;
    }
    rng.random_range(interval..=longest)
}

/// The fleet size the first wait is drawn from: the registration's listing of the
/// environment (the freshest count), else the last sweep's in the state dir; `None` (a
/// fleet of [`FLEET_BEFORE_FIRST_LISTING`]) when neither saw a labelled host.
fn first_fleet_size(registration: Option<usize>, last_sweep: Option<usize>) -> Option<usize> {
    registration
        .filter(|n| *n > 0)
        .or(last_sweep.filter(|n| *n > 0))
}

/// Bounds an Auto Scaling call; the error as one line.
async fn ask<T, E: fmt::Display>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(ASK_BUDGET, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!(
            "{what}: no answer within {}",
            crate::retry::rounded(ASK_BUDGET)
        )),
    }
}

/// Auto Scaling's answer, as evidence.
fn describe_membership(m: Option<&GroupMembership>) -> String {
    match m {
        None => "not known to Auto Scaling (its termination is over)".into(),
        Some(m) => format!(
            "{} in group {}",
            m.lifecycle_state.as_deref().unwrap_or("of no state"),
            m.group
        ),
    }
}

impl<C, L, P> Reaper<C, L, P>
where
    C: Cluster,
    L: LifecycleActions,
    P: Paging,
{
    pub fn new(settings: Settings, cluster: C, asg: L, pager: P, records: Records) -> Self {
        Reaper {
            settings,
            cluster,
            asg,
            pager,
            records,
            metrics: Metrics::off(),
        }
    }

    /// Counts sweeps and reaps in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// One sweep: decide, page when there are too many, send the work through `door` and
    /// wait for it (unless dry), log every decision with its evidence, record the sweep.
    /// `cancel` (a stop) cuts the wait short; the work already sent goes on in the workflow.
    pub async fn sweep(
        &self,
        door: &mpsc::Sender<Work>,
        cancel: &CancellationToken,
    ) -> SweepReport {
        let started_at = now_rfc3339();
        let (mut report, own_group, hosts_of) = self.decide().await;
        report.dry_run = self.settings.dry_run;
        if report.refused.is_none() {
            let candidates =
                report.instances_with(|d| matches!(d, Decision::Reap | Decision::Deferred));
            if candidates.len() > self.settings.max_per_sweep {
                report.paged = self.page_mass_death(&report, candidates.len()).await;
            }
            if self.settings.dry_run {
                for h in &mut report.hosts {
                    if h.decision == Decision::Reap {
                        h.decision = Decision::WouldReap;
                    }
                }
                for w in &mut report.warm {
                    if w.decision == Decision::Reap {
                        w.decision = Decision::WouldReap;
                    }
                }
                for r in &mut report.resumed {
                    if r.decision == Decision::Reap {
                        r.decision = Decision::WouldReap;
                    }
                }
            } else {
                self.act(&mut report, &own_group, &hosts_of, door, cancel)
                    .await;
            }
        }
        self.log(&report);
        self.records.save_sweep(&self.record(&report, started_at));
        self.count(&report);
        report
    }

    /// Every decision that was not "leave it", and the sweep itself.
    fn count(&self, report: &SweepReport) {
        let decisions = report
            .hosts
            .iter()
            .map(|h| &h.decision)
            .chain(report.warm.iter().map(|w| &w.decision))
            .chain(report.resumed.iter().map(|r| &r.decision));
        for decision in decisions {
            let outcome = match decision {
                Decision::Leave(_) | Decision::Reap => continue,
                Decision::Reaped => ReapOutcome::Reaped,
                Decision::Failed(_) => ReapOutcome::Failed,
                Decision::NotConfirmed => ReapOutcome::NotConfirmed,
                Decision::Interrupted => ReapOutcome::Interrupted,
                Decision::Deferred => ReapOutcome::Deferred,
                Decision::WouldReap => ReapOutcome::WouldReap,
            };
            self.metrics.record(Event::Reap { outcome });
        }
        self.metrics.record(Event::Sweep {
            refused: report.refused.is_some(),
            at: SystemTime::now(),
        });
    }

    /// Everything a sweep decides before it acts: the report, this instance's group, and
    /// the hosts of each instance in the listing.
    async fn decide(&self) -> (SweepReport, String, BTreeMap<String, Vec<String>>) {
        let own = self.settings.own_instance.as_str();
        let nothing = BTreeMap::new();
        let own_group = match ask(
            "asking Auto Scaling about this instance",
            self.asg.membership(own),
        )
        .await
        {
            Ok(Some(m)) => m.group,
            Ok(None) => {
                return (
                    SweepReport::refused(format!(
                        "Auto Scaling does not know this instance {own} (wrong region, account or credentials, or an instance outside any group): every instance would look gone, so nothing is touched"
                    )),
                    String::new(),
                    nothing,
                )
            }
            Err(e) => {
                return (
                    SweepReport::refused(format!("{e}; nothing is touched this time")),
                    String::new(),
                    nothing,
                )
            }
        };
        let listing = match self.cluster.hosts(Instant::now() + LIST_BUDGET).await {
            Ok(hosts) => hosts,
            Err(e) => {
                return (
                    SweepReport::refused(format!(
                        "listing the environment's hosts failed: {e}; nothing is touched this time"
                    )),
                    own_group,
                    nothing,
                )
            }
        };
        let mut report = SweepReport {
            labelled: Some(listing.iter().filter(|h| h.instance_id.is_some()).count()),
            connected_labelled: Some(listing.iter().filter(|h| h.runs_a_drover()).count()),
            ..SweepReport::default()
        };
        // The hosts of each instance, and whether any of them is not disconnected: an
        // instance with a live agent is alive, whatever Auto Scaling says.
        let mut hosts_of: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut live: HashSet<&str> = HashSet::new();
        for h in &listing {
            if let Some(i) = &h.instance_id {
                hosts_of.entry(i.clone()).or_default().push(h.id.clone());
                if h.agent != AgentContact::Disconnected {
                    live.insert(i.as_str());
                }
            }
        }
        let mut to_ask: Vec<String> = Vec::new();
        for h in &listing {
            let decision = first_look(h, own, &self.settings.own_region, &live);
            if decision.is_none() {
                if let Some(i) = &h.instance_id {
                    if !to_ask.contains(i) {
                        to_ask.push(i.clone());
                    }
                }
            }
            report.hosts.push(HostVerdict {
                host_id: h.id.clone(),
                instance_id: h.instance_id.clone(),
                group: h.group.clone(),
                agent: h.agent,
                autoscaling: None,
                decision: decision.unwrap_or(Decision::Reap),
            });
        }
        if !to_ask.is_empty() {
            let answers = match ask(
                "asking Auto Scaling about the disconnected hosts' instances",
                self.asg.memberships(&to_ask),
            )
            .await
            {
                Ok(a) => a,
                Err(e) => {
                    let mut refused =
                        SweepReport::refused(format!("{e}; nothing is touched this time"));
                    refused.labelled = report.labelled;
                    refused.connected_labelled = report.connected_labelled;
                    return (refused, own_group, nothing);
                }
            };
            let mut candidates: Vec<String> = Vec::new();
            for h in report
                .hosts
                .iter_mut()
                .filter(|h| h.decision == Decision::Reap)
            {
                let Some(instance) = h.instance_id.clone() else {
                    continue;
                };
                let m = answers.get(&instance);
                h.autoscaling = Some(describe_membership(m));
                match m {
                    Some(m) if !reapable_state(m.lifecycle_state.as_deref()) => {
                        h.decision =
                            Decision::Leave("Auto Scaling shows the instance alive".into());
                        continue;
                    }
                    _ => {}
                }
                if !candidates.contains(&instance) {
                    candidates.push(instance.clone());
                }
                let position = candidates.iter().position(|c| *c == instance).unwrap_or(0);
                if position >= self.settings.max_per_sweep {
                    h.decision = Decision::Deferred;
                }
            }
        }
        self.decide_warm_pool(&mut report, &own_group, &hosts_of)
            .await;
        report.resumed = self.unfinished(&hosts_of, &report.warm);
        (report, own_group, hosts_of)
    }

    /// The take-outs an earlier sweep of this drover began and did not finish, as the state
    /// dir records them, whose instance this sweep decides nothing else about: no host of it
    /// is listed (the listing decides about those, as about any host), it is not in the warm
    /// pool, and the record is not older than [`RESUME_FOR`] (or of unknown age).
    fn unfinished(
        &self,
        listed: &BTreeMap<String, Vec<String>>,
        warm: &[WarmVerdict],
    ) -> Vec<ResumedVerdict> {
        let own = self.settings.own_instance.as_str();
        let reaper = Source::Reaper.to_string();
        let now = SystemTime::now();
        let recent = |started_at: &str| {
            humantime::parse_rfc3339(started_at)
                .ok()
                .is_some_and(|t| now.duration_since(t).unwrap_or_default() <= RESUME_FOR)
        };
        self.records
            .all()
            .into_iter()
            .filter(|r| r.source == reaper && !r.finished() && r.instance_id != own)
            .filter(|r| !listed.contains_key(&r.instance_id))
            .filter(|r| !warm.iter().any(|w| w.instance_id == r.instance_id))
            .filter(|r| recent(&r.started_at))
            .map(|r| ResumedVerdict {
                hosts: r.host_id.iter().chain(&r.other_hosts).cloned().collect(),
                instance_id: r.instance_id,
                group: r.group,
                started_at: r.started_at,
                decision: Decision::Reap,
            })
            .collect()
    }

    /// The warm pool of this drover's own group: each instance in `Warmed:Terminating:Wait`
    /// that no host of the environment carries is to be let go; the rest are left alone.
    /// A pool that cannot be read is noted and skipped: the hosts' sweep stands on its own
    /// answers.
    async fn decide_warm_pool(
        &self,
        report: &mut SweepReport,
        own_group: &str,
        hosts_of: &BTreeMap<String, Vec<String>>,
    ) {
        let pool = match ask(
            &format!("reading group {own_group}'s warm pool"),
            self.asg.warm_pool(own_group),
        )
        .await
        {
            Ok(pool) => pool,
            Err(e) => {
                tracing::warn!("{e}; the warm pool is left for a later sweep");
                report.warm_error = Some(e);
                return;
            }
        };
        for w in pool {
            let state = w.lifecycle_state.unwrap_or_default();
            let decision = if state != WARMED_TERMINATING_WAIT {
                Decision::Leave(format!("not {WARMED_TERMINATING_WAIT}"))
            } else if hosts_of.contains_key(&w.instance_id) {
                Decision::Leave("a host of this environment carries it".into())
            } else {
                Decision::Reap
            };
            report.warm.push(WarmVerdict {
                instance_id: w.instance_id,
                state,
                decision,
            });
        }
    }

    /// Sends one termination per instance to reap through the door, then waits for each.
    async fn act(
        &self,
        report: &mut SweepReport,
        own_group: &str,
        hosts_of: &BTreeMap<String, Vec<String>>,
        door: &mpsc::Sender<Work>,
        cancel: &CancellationToken,
    ) {
        let mut replies: HashMap<String, oneshot::Receiver<Outcome>> = HashMap::new();
        let mut work: Vec<Termination> = Vec::new();
        for h in report.hosts.iter().filter(|h| h.decision == Decision::Reap) {
            let Some(instance) = &h.instance_id else {
                continue;
            };
            if work.iter().any(|t| &t.instance_id == instance) {
                continue;
            }
            let mut t = Termination::new(instance, Source::Reaper);
            t.group = h.group.clone();
            t.hosts = Some(hosts_of.get(instance).cloned().unwrap_or_default());
            work.push(t);
        }
        for w in report.warm.iter().filter(|w| w.decision == Decision::Reap) {
            let mut t = Termination::new(&w.instance_id, Source::Reaper);
            t.group = Some(own_group.to_string());
            t.hosts = Some(Vec::new());
            work.push(t);
        }
        for r in report
            .resumed
            .iter()
            .filter(|r| r.decision == Decision::Reap)
        {
            if work.iter().any(|t| t.instance_id == r.instance_id) {
                continue;
            }
            let mut t = Termination::new(&r.instance_id, Source::Reaper);
            t.group = r.group.clone();
            t.hosts = Some(r.hosts.clone());
            work.push(t);
        }
        for t in work {
            let instance = t.instance_id.clone();
            let (item, reply) = Work::terminate(t);
            let sent = tokio::select! {
                biased;
                () = cancel.cancelled() => false,
                sent = door.send(item) => sent.is_ok(),
            };
            if !sent {
                break;
            }
            replies.insert(instance, reply);
        }
        let mut outcomes: HashMap<String, Decision> = HashMap::new();
        for (instance, reply) in replies {
            let decision = tokio::select! {
                biased;
                () = cancel.cancelled() => Decision::Interrupted,
                outcome = reply => match outcome {
                    Ok(Outcome::Done) => Decision::Reaped,
                    Ok(Outcome::NotHere) => Decision::NotConfirmed,
                    Ok(Outcome::FailedButCompleted) => Decision::Failed(
                        "taking the host out failed (paged; its lifecycle action answered with lifecycle.on_failure)".into(),
                    ),
                    Ok(Outcome::NotCompleted) => Decision::Failed(
                        "not confirmed by Auto Scaling, or its lifecycle action not completed".into(),
                    ),
                    Err(_) => Decision::Interrupted,
                },
            };
            outcomes.insert(instance, decision);
        }
        let settle = |instance: &str, decision: &mut Decision| {
            if *decision == Decision::Reap {
                // Not sent: the drover stopped first.
                *decision = outcomes
                    .get(instance)
                    .cloned()
                    .unwrap_or(Decision::Interrupted);
            }
        };
        for h in &mut report.hosts {
            if let Some(instance) = h.instance_id.clone() {
                settle(&instance, &mut h.decision);
            }
        }
        for w in &mut report.warm {
            settle(&w.instance_id.clone(), &mut w.decision);
        }
        for r in &mut report.resumed {
            settle(&r.instance_id.clone(), &mut r.decision);
        }
    }

    /// Pages once about a sweep with more candidates than it may take out; whether a pager
    /// took it. A dry run only says it would.
    async fn page_mass_death(&self, report: &SweepReport, count: usize) -> bool {
        let cap = self.settings.max_per_sweep;
        let now = now_rfc3339();
        let list: Vec<(String, String)> = report
            .hosts
            .iter()
            .filter(|h| matches!(h.decision, Decision::Reap | Decision::Deferred))
            .map(|h| {
                (
                    now.clone(),
                    format!(
                        "host {} of {}: agent {}, {}{}",
                        h.host_id,
                        h.instance_id.as_deref().unwrap_or("?"),
                        h.agent,
                        h.autoscaling.as_deref().unwrap_or("?"),
                        if h.decision == Decision::Deferred {
                            " (left for a later sweep)"
                        } else {
                            ""
                        }
                    ),
                )
            })
            .collect();
        let names: Vec<String> = list.iter().map(|(_, text)| text.clone()).collect();
        let what = format!(
            "{count} disconnected hosts have lost their instances, more than reaper.max_per_sweep ({cap}) in one sweep: {} {cap} now, the rest in later sweeps",
            if self.settings.dry_run {
                "a dry run would take out"
            } else {
                "taking out"
            }
        );
        if self.settings.dry_run {
            tracing::warn!("{what} (dry run: not paging): {}", names.join("; "));
            return false;
        }
        if !self.pager.is_configured() {
            tracing::error!("{what} (no pager configured): {}", names.join("; "));
            return false;
        }
        let incident = Incident {
            kind: IncidentKind::Reap,
            instance_id: self.settings.environment.clone(),
            host_id: None,
            group: None,
            hostname: None,
            failed_step: "reap".into(),
            error: what.clone(),
            severity: Severity::Critical,
            timeline: list,
            details: BTreeMap::from([
                ("swept_by".to_string(), self.settings.own_instance.clone()),
                ("max_per_sweep".to_string(), cap.to_string()),
            ]),
        };
        match self
            .pager
            .trigger(&incident, Instant::now() + PAGE_BUDGET)
            .await
        {
            Ok(()) => {
                tracing::warn!("paged: {what}: {}", names.join("; "));
                true
            }
            Err(e) => {
                tracing::error!("PAGING FAILED ({what}): {e}");
                false
            }
        }
    }

    /// Every decision with its evidence: the hosts drover cares about at info, connected
    /// and unlabelled ones at debug; then one line for the sweep. A refusal is the caller's
    /// to tell (`drover reap` fails with it, `drover run` logs it).
    fn log(&self, report: &SweepReport) {
        if report.refused.is_some() {
            return;
        }
        for h in &report.hosts {
            let plain = matches!(h.decision, Decision::Leave(_))
                && (h.agent == AgentContact::Connected || h.instance_id.is_none());
            let instance = h.instance_id.as_deref().unwrap_or("-");
            let autoscaling = h.autoscaling.as_deref().unwrap_or("not asked");
            if plain {
                tracing::debug!(host_id = %h.host_id, instance_id = instance, agent = %h.agent, "reaper: {}", h.decision);
            } else {
                tracing::info!(host_id = %h.host_id, instance_id = instance, agent = %h.agent, autoscaling, "reaper: {}", h.decision);
            }
        }
        for w in &report.warm {
            tracing::info!(instance_id = %w.instance_id, state = %w.state, "reaper, warm pool: {}", w.decision);
        }
        for r in &report.resumed {
            tracing::info!(instance_id = %r.instance_id, hosts = %r.hosts.join(","), started_at = %r.started_at, "reaper, an earlier sweep's unfinished take-out: {}", r.decision);
        }
        let count =
            |pick: fn(&Decision) -> bool| report.hosts.iter().filter(|h| pick(&h.decision)).count();
        tracing::info!(
            hosts = report.hosts.len(),
            labelled = report.labelled.unwrap_or(0),
            connected_labelled = report.connected_labelled.unwrap_or(0),
            disconnected = report
                .hosts
                .iter()
                .filter(|h| h.agent == AgentContact::Disconnected)
                .count(),
            reaped = count(|d| matches!(d, Decision::Reaped)),
            would_reap = count(|d| matches!(d, Decision::WouldReap)),
            failed = count(Decision::failed),
            deferred = count(|d| matches!(d, Decision::Deferred)),
            warm_pool_completed = report
                .warm
                .iter()
                .filter(|w| matches!(w.decision, Decision::Reaped | Decision::WouldReap))
                .count(),
            resumed = report.resumed.len(),
            dry_run = report.dry_run,
            "reaper sweep done"
        );
    }

    fn record(&self, report: &SweepReport, started_at: String) -> SweepRecord {
        let warm_done = report
            .warm
            .iter()
            .filter(|w| matches!(w.decision, Decision::Reaped | Decision::WouldReap))
            .map(|w| w.instance_id.clone())
            .collect();
        SweepRecord {
            instance_id: self.settings.own_instance.clone(),
            started_at,
            finished_at: now_rfc3339(),
            dry_run: report.dry_run,
            refused: report.refused.clone(),
            hosts_listed: report.hosts.len(),
            labelled_hosts: report.labelled.unwrap_or(0),
            connected_labelled_hosts: report.connected_labelled.unwrap_or(0),
            considered: report
                .hosts
                .iter()
                .filter(|h| h.agent != AgentContact::Connected)
                .map(|h| HostVerdictRecord {
                    host_id: h.host_id.clone(),
                    instance_id: h.instance_id.clone(),
                    agent: h.agent.to_string(),
                    autoscaling: h.autoscaling.clone(),
                    decision: h.decision.to_string(),
                })
                .chain(report.resumed.iter().map(|r| HostVerdictRecord {
                    host_id: r.hosts.first().cloned().unwrap_or_else(|| "-".into()),
                    instance_id: Some(r.instance_id.clone()),
                    agent: "not listed".into(),
                    autoscaling: None,
                    decision: format!(
                        "{} (an earlier sweep's take-out, begun {})",
                        r.decision, r.started_at
                    ),
                }))
                .collect(),
            reaped: report
                .all_instances_with(|d| matches!(d, Decision::Reaped | Decision::WouldReap)),
            failed: report.all_instances_with(Decision::failed),
            deferred: report.instances_with(|d| matches!(d, Decision::Deferred)),
            warm_pool_completed: warm_done,
            warm_pool_error: report.warm_error.clone(),
            paged: report.paged,
        }
    }
}

/// The decision a host gets from the listing alone; `None`: a candidate, for Auto Scaling
/// to tell.
fn first_look(h: &EnvHost, own: &str, own_region: &str, live: &HashSet<&str>) -> Option<Decision> {
    let leave = |why: &str| Some(Decision::Leave(why.to_string()));
    let Some(instance) = h.instance_id.as_deref() else {
        return leave("no aws.instance_id label (not a host drover registered)");
    };
    if h.group.is_none() {
        return leave("no aws.autoscaling_group label (its instance is in no group)");
    }
    if instance == own {
        return leave("this instance's own host");
    }
    match h.agent {
        AgentContact::Connected => leave("agent connected"),
        AgentContact::Reconnecting => leave("agent reconnecting (it may come back)"),
        AgentContact::Disconnected if live.contains(instance) => {
            leave("another host of the same instance is connected")
        }
        AgentContact::Disconnected => match h.region.as_deref() {
            Some(region) if region != own_region => leave(&format!(
                "aws.region {region}, not this instance's {own_region}: Auto Scaling here cannot speak for it"
            )),
            _ => None,
        },
    }
}

/// Sweeps until `intake` is cancelled: the first sweep one wait after the start, each
/// wait drawn by [`next_wait`] from the last listing (the state dir's last sweep at first).
/// A stop ends the wait and any sweep under way at once.
pub async fn watch<C, L, P>(
    reaper: Reaper<C, L, P>,
    door: mpsc::Sender<Work>,
    intake: CancellationToken,
) where
    C: Cluster,
    L: LifecycleActions,
    P: Paging,
{
    let mut rng = StdRng::from_os_rng();
    let mut sweepers = first_fleet_size(
        reaper.cluster.connected_labelled_last_listed(),
        reaper
            .records
            .last_sweep()
            .map(|s| s.connected_labelled_hosts),
    );
    let interval = reaper.settings.interval;
    tracing::info!(
        interval = %humantime::format_duration(interval),
        max_per_sweep = reaper.settings.max_per_sweep,
        dry_run = reaper.settings.dry_run,
        "reaper on"
    );
    loop {
        let wait = next_wait(interval, sweepers, &mut rng);
        tracing::debug!(
            "next reaper sweep in {} ({} connected labelled hosts last seen)",
            crate::retry::rounded(wait),
            sweepers.map_or("no".to_string(), |n| n.to_string())
        );
        tokio::select! {
            biased;
            () = intake.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let report = tokio::select! {
            biased;
            () = intake.cancelled() => return,
            report = reaper.sweep(&door, &intake) => report,
        };
        if let Some(why) = &report.refused {
            tracing::warn!("reaper sweep refused: {why}");
        }
        if let Some(n) = report.connected_labelled {
            sweepers = Some(n);
        }
    }
}

#[cfg(test)]
mod tests;
