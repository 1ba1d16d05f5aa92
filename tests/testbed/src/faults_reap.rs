//! Reaper cases of the seeded fault campaign: a few `drover run` peers in one Rancher
//! environment with the reaper on (`reaper.interval` [`INTERVAL`]), among their hosts the
//! ghosts of instances that died without a clean stop and hosts that must be left alone,
//! and faults across Rancher and Auto Scaling, a peer killed and restarted, a second
//! reaper, a dead host's own late drover. After each case the reaper's promises (issue 13)
//! are checked:
//!
//! - no host of a live instance is ever touched (nor any host the rules leave alone: a
//!   reconnecting agent, a host without both labels, an instance with a connected host);
//! - every dead host is out within `(N + 1) × interval` of the fleet's start (or of the end
//!   of an Auto Scaling outage), N the labelled hosts with a connected agent that the peers
//!   list, a warmed instance's action completed within the same;
//! - each waiting lifecycle action is completed exactly once, with `CONTINUE`, and no other;
//! - nothing is touched in a case where Auto Scaling is blind (it knows none of the fleet's
//!   instances), and nothing before an Auto Scaling outage ends;
//!
//! and, as in the other campaigns, no page (no take-out here may fail), no secret in any
//! output, no panic, and every drover gone within [`STOP_LIMIT`] of SIGTERM with status 0.
//!
//! # Why the (N + 1) × interval bound holds by design, and why not 3 × interval
//!
//! Every case starts its peers fresh (no sweep record), and each draws its first wait from
//! its registration's listing: uniform over `[interval, N × interval]`, where N counts the
//! labelled hosts with a connected agent (here the peers' own, a connected host unknown to
//! Auto Scaling, and a twin's new host: five for three peers). So every peer's first sweep
//! comes within N intervals of its start, and the dead hosts are dead by then. The first sweep
//! of any peer takes them all out (fewer than `max_per_sweep`); a peer killed mid-take-out
//! leaves it to the others' first sweeps, still within N intervals. A sweep refused when
//! Auto Scaling does not answer keeps the N it drew from, so the next one comes within N
//! intervals again: an outage is judged from its end. That leaves one interval for the
//! take-out itself, which is why the faults drawn here (Rancher errors, slowness, slow
//! transitions; a few Auto Scaling errors, each retried by the SDK within the call) stay
//! small.
//!
//! Issue 13 asked for 3 × interval. That held while a fresh drover assumed a fleet of two
//! and swept within two intervals, which made a fleet started at once sweep at once (N
//! listings in two intervals). With the first wait spread as the steady ones are, no fixed
//! number of intervals holds for every case: the earliest of k first waits comes within
//! three intervals with chance `1 - ((N - 3) / (N - 1))^k`, 7 in 8 here. The report gives how
//! many cases were within 3 × interval all the same.
//!
//! A peer killed after it removed a host but before it answered the instance's action
//! leaves the host out (so within the bound) and the action to its own first sweep after the
//! restart, from its take-out record: no other peer lists a removed host. That action is
//! held to "exactly once" only, within N intervals of the restart.
//!
//! Reaper seeds are drawn apart from the termination and boot campaigns' seeds: seed `n`
//! here has nothing to do with seed `n` there. Cases share the campaign's Docker engine
//! (no case starts an agent: every host is put in the Rancher stand-in directly).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::autoscaling::AutoScalingServer;
use crate::bed::GROUP;
use crate::faults::{
    base_config, fail_asg, instance, names_segment, output_violations, read_logs, run_seeds,
    spawn_drover, summary_of, tail, taken_out, Campaign, ROUTING_KEY, SECRET, STOP_LIMIT,
};
use crate::http::{Fault, Match};
use crate::imds::{ImdsOptions, ImdsServer};
use crate::launch::{Endpoints, Running};
use crate::pager::PagerServer;
use crate::proxy::ResetProxy;
use crate::rancher::{HostSpec, RancherOptions, RancherServer};

/// `reaper.interval` of every drover in a reaper case: long enough that a take-out under the
/// faults drawn here (Rancher errors and slowness, the AWS SDK's backoff on throttling) fits
/// in the one interval the (N + 1) × interval bound leaves it (see the module docs).
pub const INTERVAL: Duration = Duration::from_secs(4);
/// How many `drover run` peers share the environment.
pub const PEERS: usize = 3;
/// drover's `lifecycle.drain_timeout`: far more than any take-out here needs.
const DRAIN: Duration = Duration::from_secs(60);
/// How long past the (N + 1) × interval bound the harness goes on watching, so that a dead host
/// taken out late is told from one never taken out.
const GRACE: Duration = Duration::from_secs(4);
/// How long a second completion or a stray take-out would take to show after the end.
const SETTLE: Duration = Duration::from_secs(1);
/// The most a one-shot `drover reap` or `drover deregister` of a case may take.
const ONE_SHOT_LIMIT: Duration = Duration::from_secs(90);
/// How long the peers may take to be ready (an outage holds up their boot's lookups).
const READY_LIMIT: Duration = Duration::from_secs(90);
/// How often the harness looks at the world while a case runs.
const TICK: Duration = Duration::from_millis(25);
/// How much of each process's log a failing case shows (`DROVER_FAULTS_TAIL` overrides).
fn tail_lines() -> usize {
    std::env::var("DROVER_FAULTS_TAIL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25)
}
/// Mixed into a reaper seed, so that reaper seed `n` draws nothing like the other seeds `n`.
const REAP_STREAM: u64 = 0x4EA9_5EED_0000_0000;

/// PeerKilled: when the peer is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillAt {
    /// The drawn peer, this long after the fleet's start (somewhere in the first sweeps).
    Time(Duration),
    /// The first peer to log that it is reaping a host, this long after: mid-take-out.
    Reaping(Duration),
    /// The first peer to log a waiting instance's host out of Rancher, at once: after the
    /// take-out, before (or just after) the lifecycle action's answer.
    OutOfRancher,
}

/// What the case is about, beyond the ghosts every case has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReapScene {
    /// The peers sweep with nothing in their way but the faults drawn.
    Sweep,
    /// Auto Scaling knows none of the peers' own instances (the fleet's region, account or
    /// credentials wrong): every sweep is refused and nothing may be touched.
    BlindFleet,
    /// Auto Scaling does not know one peer's own instance: that peer refuses every sweep,
    /// the others reap.
    BlindPeer,
    /// Every Auto Scaling call fails (throttled, or 503) from the fleet's start until the
    /// outage ends: nothing touched before, every dead host out within (N + 1) × interval after.
    AsgOutage,
    /// A peer's drover SIGKILLed while the first sweeps come (mid-take-out, at times) and
    /// started again.
    PeerKilled,
    /// `drover reap` from outside the fleet (a cron job) started at the peers' first
    /// take-out action: two reapers on the same hosts at once.
    TwoReapers,
    /// The own drover of a dead host whose instance waits in `Terminating:Wait` comes back
    /// late (after a partition) and runs `drover deregister` as the reaper takes its host
    /// out: out once, completed once.
    LateOwnDrover,
}

/// One kind of fault, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReapFault {
    Rancher5xx,
    Rancher409,
    RancherListing5xx,
    RancherPageErrors,
    RancherSlow,
    RancherReset,
    RancherSlowTransition,
    AsgThrottling,
    AsgUnavailable,
}

impl ReapFault {
    pub fn describe(self) -> &'static str {
        match self {
            ReapFault::Rancher5xx => "Rancher 500/502/503 on take-out actions",
            ReapFault::Rancher409 => "Rancher 409 Conflict on take-out actions",
            ReapFault::RancherListing5xx => "Rancher 500/503 on host listings",
            ReapFault::RancherPageErrors => "Rancher 503 on a listing's later pages",
            ReapFault::RancherSlow => "Rancher answering slowly",
            ReapFault::RancherReset => "Rancher connections reset",
            ReapFault::RancherSlowTransition => "slow Rancher state transitions",
            ReapFault::AsgThrottling => "Auto Scaling Throttling (a few calls)",
            ReapFault::AsgUnavailable => "Auto Scaling 503 ServiceUnavailable (a few calls)",
        }
    }
}

/// A dead instance of the case: its host's agent `disconnected` (or, warmed, no host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Ghost {
    /// Its termination is over: Auto Scaling no longer knows it.
    Gone,
    /// `Terminating:Wait` from the start, its action waiting.
    Waiting,
    /// `Terminating`, then `Terminating:Wait` after a lag.
    Terminating,
    /// Terminated from the group's warm pool: `Warmed:Terminating:Wait`, no host anywhere.
    Warmed,
}

impl Ghost {
    fn describe(self) -> &'static str {
        match self {
            Ghost::Gone => "instance gone",
            Ghost::Waiting => "Terminating:Wait",
            Ghost::Terminating => "Terminating, Wait later",
            Ghost::Warmed => "Warmed:Terminating:Wait, no host",
        }
    }

    /// A lifecycle action waits for it.
    fn waits(self) -> bool {
        self != Ghost::Gone
    }
}

/// One reaper case, drawn from its seed.
#[derive(Debug, Clone)]
pub struct ReapPlan {
    pub seed: u64,
    pub scene: ReapScene,
    pub faults: Vec<ReapFault>,
    /// `rancher.api_version`: `v1` reads the agent from `agentState`, `v2-beta` from `state`.
    pub api: &'static str,
    /// The Rancher stand-in's page size: 3 makes every listing several pages.
    pub page_size: usize,
    pub ghosts: Vec<Ghost>,
    rancher_errors: usize,
    rancher_error_status: u16,
    conflicts: usize,
    listing_errors: usize,
    listing_error_status: u16,
    page_errors: usize,
    rancher_latency: Duration,
    transition_delay: Duration,
    resets: usize,
    asg_errors: usize,
    terminating_lag: Duration,
    /// AsgOutage: from the first peer ready to the end of the outage; throttled or 503.
    outage: Duration,
    outage_throttling: bool,
    /// The peer blind (BlindPeer), or killed (PeerKilled) at `KillAt::Time`.
    victim: usize,
    /// PeerKilled: the moment of the kill, and from the kill to the restart.
    kill_at: KillAt,
    restart_after: Duration,
    /// TwoReapers, LateOwnDrover: the one-shot drover starts at the first take-out action
    /// of the fleet (on its own host, for the late drover) when `true`, else this long
    /// after the fleet's start.
    at_first_action: bool,
    one_shot_after: Duration,
}

impl ReapPlan {
    pub fn from_seed(seed: u64) -> ReapPlan {
        let mut rng = StdRng::seed_from_u64(seed ^ REAP_STREAM);
        let scene = match rng.random_range(0..20) {
            0..=4 => ReapScene::Sweep,
            5..=6 => ReapScene::BlindFleet,
            7..=8 => ReapScene::BlindPeer,
            9..=11 => ReapScene::AsgOutage,
            12..=14 => ReapScene::PeerKilled,
            15..=17 => ReapScene::TwoReapers,
            _ => ReapScene::LateOwnDrover,
        };
        let interval = INTERVAL.as_millis() as u64;
        let mut plan = ReapPlan {
            seed,
            scene,
            faults: Vec::new(),
            api: if rng.random_bool(0.5) {
                "v1"
            } else {
                "v2-beta"
            },
            page_size: if rng.random_bool(0.3) { 3 } else { 100 },
            ghosts: vec![Ghost::Gone],
            rancher_errors: 0,
            rancher_error_status: 500,
            conflicts: 0,
            listing_errors: 0,
            listing_error_status: 500,
            page_errors: 0,
            rancher_latency: Duration::ZERO,
            transition_delay: Duration::ZERO,
            resets: 0,
            asg_errors: 0,
            terminating_lag: Duration::from_millis(rng.random_range(300..2500)),
            outage: Duration::from_millis(rng.random_range(interval..interval * 5 / 2)),
            outage_throttling: rng.random_bool(0.5),
            victim: rng.random_range(0..PEERS),
            kill_at: match rng.random_range(0..10) {
                0..=2 => KillAt::Time(Duration::from_millis(
                    rng.random_range(interval..interval * 2),
                )),
                3..=6 => KillAt::Reaping(Duration::from_millis(rng.random_range(0..1500))),
                _ => KillAt::OutOfRancher,
            },
            restart_after: Duration::from_millis(rng.random_range(0..1500)),
            at_first_action: rng.random_bool(0.7),
            one_shot_after: Duration::from_millis(rng.random_range(interval..interval * 2)),
        };
        for (ghost, p) in [
            (Ghost::Waiting, 0.6),
            (Ghost::Terminating, 0.4),
            (Ghost::Warmed, 0.3),
        ] {
            // The late drover's instance waits in Terminating:Wait.
            if rng.random_bool(p) || (ghost == Ghost::Waiting && scene == ReapScene::LateOwnDrover)
            {
                plan.ghosts.push(ghost);
            }
        }
        let mut faults = Vec::new();
        let mut pick = |p: f64, kind: ReapFault, rng: &mut StdRng| {
            let on = rng.random_bool(p);
            if on {
                faults.push(kind);
            }
            on
        };
        if pick(0.25, ReapFault::Rancher5xx, &mut rng) {
            plan.rancher_errors = rng.random_range(1..=2);
            plan.rancher_error_status = [500, 502, 503][rng.random_range(0..3)];
        }
        if pick(0.2, ReapFault::Rancher409, &mut rng) {
            plan.conflicts = rng.random_range(1..=2);
        }
        if pick(0.25, ReapFault::RancherListing5xx, &mut rng) {
            plan.listing_errors = rng.random_range(1..=3);
            plan.listing_error_status = [500, 503][rng.random_range(0..2)];
        }
        if plan.page_size < 100 && pick(0.5, ReapFault::RancherPageErrors, &mut rng) {
            plan.page_errors = rng.random_range(1..=2);
        }
        if pick(0.2, ReapFault::RancherSlow, &mut rng) {
            plan.rancher_latency = Duration::from_millis(rng.random_range(20..120));
        }
        if pick(0.15, ReapFault::RancherReset, &mut rng) {
            plan.resets = rng.random_range(1..=3);
        }
        // A killed peer is more often killed mid-take-out when a take-out takes a while.
        let slow_p = if scene == ReapScene::PeerKilled {
            0.7
        } else {
            0.3
        };
        if pick(slow_p, ReapFault::RancherSlowTransition, &mut rng) {
            plan.transition_delay = Duration::from_millis(rng.random_range(50..400));
        }
        // An outage is a fault of its own; a blind fleet refuses before any other call.
        if !matches!(scene, ReapScene::AsgOutage | ReapScene::BlindFleet) {
            // At most two failures of each action: the SDK's three attempts absorb them
            // within one call (a longer refusal is the outage's scene).
            if pick(0.25, ReapFault::AsgThrottling, &mut rng) {
                plan.asg_errors = rng.random_range(1..=2);
            }
            if plan.asg_errors == 0 && pick(0.15, ReapFault::AsgUnavailable, &mut rng) {
                plan.asg_errors = rng.random_range(1..=2);
            }
        }
        plan.faults = faults;
        plan
    }

    fn has(&self, kind: ReapFault) -> bool {
        self.faults.contains(&kind)
    }

    fn asg_faults(&self) -> bool {
        self.asg_errors > 0 || self.scene == ReapScene::AsgOutage
    }

    /// Auto Scaling knows none of the fleet: nothing may be touched.
    fn blind(&self) -> bool {
        self.scene == ReapScene::BlindFleet
    }
}

/// What one reaper case found.
#[derive(Debug, Clone)]
pub struct ReapReport {
    pub plan: ReapPlan,
    pub violations: Vec<String>,
    pub took: Duration,
    /// drover's logs, for a failing case.
    pub log_tail: String,
    /// From the fleet's start (or the outage's end) to the last dead host seen out (a
    /// warmed instance: answered); `None` when there was nothing to take out.
    pub slowest: Option<Duration>,
    /// What `slowest` was held to: `(N + 1) × interval` (see the module docs).
    pub bound: Duration,
    /// Take-outs a peer's sweep finished from the record of an earlier, interrupted one.
    pub resumed: usize,
}

impl crate::faults::Outcome for ReapReport {
    fn seed(&self) -> u64 {
        self.plan.seed
    }
    fn label(&self) -> String {
        format!(
            "{:?}, {}, ghosts {:?}, {:?}",
            self.plan.scene, self.plan.api, self.plan.ghosts, self.plan.faults
        )
    }
    fn violations(&self) -> &[String] {
        &self.violations
    }
    fn took(&self) -> Duration {
        self.took
    }
    fn log_tail(&self) -> &str {
        &self.log_tail
    }
}

/// The reaper campaign: the campaign's binary and Docker engine.
pub struct ReapCampaign {
    pub campaign: Arc<Campaign>,
}

impl ReapCampaign {
    pub fn new(campaign: Arc<Campaign>) -> ReapCampaign {
        ReapCampaign { campaign }
    }

    /// Runs reaper `seeds`, `jobs` at a time; reports in seed order.
    pub async fn run(self: &Arc<Self>, seeds: &[u64], jobs: usize) -> Vec<ReapReport> {
        let reap = self.clone();
        run_seeds(seeds, jobs, move |seed| {
            let reap = reap.clone();
            async move { reap.run_case(ReapPlan::from_seed(seed)).await }
        })
        .await
    }

    pub async fn run_case(&self, plan: ReapPlan) -> ReapReport {
        let started = Instant::now();
        let mut case = match ReapCase::start(&self.campaign, &plan).await {
            Ok(case) => case,
            Err(e) => {
                return ReapReport {
                    plan,
                    violations: vec![format!("the case could not be set up: {e}")],
                    took: started.elapsed(),
                    log_tail: String::new(),
                    slowest: None,
                    bound: Duration::ZERO,
                    resumed: 0,
                }
            }
        };
        let mut violations = match case.play().await {
            Ok(()) => Vec::new(),
            Err(e) => vec![e],
        };
        violations.extend(case.check());
        violations.extend(case.stop().await);
        violations.extend(case.check_output());
        let log_tail = case.log_tails(tail_lines());
        ReapReport {
            slowest: case.slowest(),
            bound: case.bound(),
            resumed: case
                .log()
                .matches("an earlier sweep's unfinished take-out")
                .count(),
            plan,
            violations,
            took: started.elapsed(),
            log_tail,
        }
    }
}

/// A `drover run` of the fleet: its instance, host, files and process.
struct Peer {
    imds: ImdsServer,
    instance_id: String,
    dir: PathBuf,
    drover: Option<Running>,
    /// Every run's log, in order (a killed peer has two).
    logs: Vec<PathBuf>,
    /// When it was first seen `READY=1`.
    ready: Option<Instant>,
}

impl Peer {
    /// Sweeps it logged, ended or refused, over all its runs.
    fn sweeps(&self) -> usize {
        sweeps_in(&read_logs(&self.logs))
    }

    /// Whether it swept, or began a sweep that took a host out (a killed peer's may not
    /// have ended).
    fn swept_or_reaping(&self) -> bool {
        let log = read_logs(&self.logs);
        sweeps_in(&log) > 0 || log.contains("reaping its host")
    }
}

/// Sweeps a drover's log tells of, ended or refused.
fn sweeps_in(log: &str) -> usize {
    log.matches("reaper sweep done").count() + log.matches("reaper sweep refused").count()
}

/// A one-shot drover of a case (`drover reap` from outside the fleet, or a dead host's own
/// late `drover deregister`): its instance, files, process and how it ended.
struct OneShot {
    imds: ImdsServer,
    dir: PathBuf,
    args: &'static [&'static str],
    logs: Vec<PathBuf>,
    drover: Option<Running>,
    started: Option<Instant>,
    exit: Option<Result<Option<i32>, String>>,
}

/// A dead instance of the case and what became of it.
struct Dead {
    ghost: Ghost,
    instance_id: String,
    /// `None` for a warmed instance: it never registered.
    host_id: Option<String>,
    /// When the harness first saw its host out (removed, purging, purged), or its action
    /// completed for a warmed instance.
    out_at: Option<Instant>,
    /// When it first saw the instance's action completed.
    answered_at: Option<Instant>,
}

/// One reaper case's world.
struct ReapCase {
    plan: ReapPlan,
    drover: PathBuf,
    docker_host: String,
    /// Every drover's files; removed with the case.
    _dir: tempfile::TempDir,
    rancher: RancherServer,
    rancher_proxy: ResetProxy,
    asg: AutoScalingServer,
    pager: PagerServer,
    peers: Vec<Peer>,
    dead: Vec<Dead>,
    /// Hosts the reaper must leave alone, with what each is.
    protected: Vec<(&'static str, String)>,
    /// Instances none of whose actions may be completed.
    live_instances: Vec<String>,
    one_shot: Option<OneShot>,
    /// The fleet's start: every peer ready (and, after an outage, the outage over).
    clock: Option<Instant>,
    /// The labelled hosts with a connected agent that every peer's registration lists, which
    /// its first waits are spread over: the bound is drawn from it (see the module docs).
    sweepers: usize,
    /// PeerKilled: the peer killed (and started again).
    killed: Option<usize>,
    healed: Option<Instant>,
}

/// `HostSpec` for a host drover would have registered: both aws.* labels (or only the
/// instance id, `group = false`).
fn host_spec(name: &str, instance: &str, group: bool, ip: &str) -> HostSpec {
    let mut labels = BTreeMap::from([("aws.instance_id".to_string(), instance.to_string())]);
    if group {
        labels.insert("aws.autoscaling_group".to_string(), GROUP.to_string());
    }
    HostSpec {
        hostname: name.to_string(),
        labels,
        state: "active".into(),
        agent_state: None,
        agent_ip: ip.to_string(),
    }
}

impl ReapCase {
    async fn start(campaign: &Campaign, plan: &ReapPlan) -> Result<ReapCase, String> {
        let base = 0x200000 + plan.seed * 32;
        let rancher = RancherServer::start(RancherOptions {
            secret_key: SECRET.into(),
            transition_delay: plan.transition_delay,
            page_size: plan.page_size,
            ..RancherOptions::default()
        })
        .await;
        let rancher_proxy = ResetProxy::start(rancher.addr())
            .await
            .map_err(|e| format!("rancher proxy: {e}"))?;
        let asg = AutoScalingServer::start().await;
        crate::bed::add_group(&asg, crate::bed::HOOK_TIMEOUT);
        let pager = PagerServer::start().await;
        let dir = tempfile::Builder::new()
            .prefix("drover-reap-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let mut n = base;
        let mut next = |byte: u64| {
            n += 1;
            instance(n, byte)
        };

        let mut peers = Vec::new();
        let mut protected = Vec::new();
        let mut live_instances = Vec::new();
        for k in 0..PEERS {
            let opts = next(6);
            asg.add_instance(GROUP, &opts.instance_id, "m5.large", "us-east-1b");
            let host_id = crate::bed::add_active_host(&rancher, &opts);
            protected.push(("a peer's own host", host_id));
            live_instances.push(opts.instance_id.clone());
            let blind = plan.scene == ReapScene::BlindFleet
                || (plan.scene == ReapScene::BlindPeer && k == plan.victim);
            if blind {
                // Wrong region, account or credentials look like this from the instance.
                asg.vanish(&opts.instance_id);
            }
            let peer_dir = dir.path().join(format!("peer-{k}"));
            std::fs::create_dir_all(&peer_dir).map_err(|e| e.to_string())?;
            peers.push(Peer {
                instance_id: opts.instance_id.clone(),
                imds: ImdsServer::start(opts).await,
                dir: peer_dir,
                drover: None,
                logs: Vec::new(),
                ready: None,
            });
        }

        let mut dead = Vec::new();
        let mut late_opts: Option<ImdsOptions> = None;
        for ghost in &plan.ghosts {
            let opts = next(7);
            let id = opts.instance_id.clone();
            if *ghost == Ghost::Warmed {
                // Into the pool now; terminated from it once the fleet is up.
                asg.warm_instance(
                    GROUP,
                    &id,
                    "m5.large",
                    "us-east-1b",
                    Duration::ZERO,
                    "Warmed:Stopped",
                );
                dead.push(Dead {
                    ghost: *ghost,
                    instance_id: id,
                    host_id: None,
                    out_at: None,
                    answered_at: None,
                });
                continue;
            }
            asg.add_instance(GROUP, &id, "m5.large", "us-east-1b");
            let host =
                rancher.add_host(host_spec(&opts.local_hostname, &id, true, &opts.local_ipv4));
            rancher.lose_agent(&host, Duration::ZERO, Duration::ZERO);
            match ghost {
                Ghost::Gone => {
                    asg.vanish(&id);
                }
                Ghost::Waiting => {
                    asg.begin_termination(&id, Duration::ZERO)
                        .ok_or("no termination hook")?;
                    if plan.scene == ReapScene::LateOwnDrover && late_opts.is_none() {
                        late_opts = Some(opts.clone());
                    }
                }
                Ghost::Terminating => {
                    asg.begin_termination(&id, plan.terminating_lag)
                        .ok_or("no termination hook")?;
                }
                Ghost::Warmed => {}
            }
            dead.push(Dead {
                ghost: *ghost,
                instance_id: id,
                host_id: Some(host),
                out_at: None,
                answered_at: None,
            });
        }

        // Hosts the rules leave alone, every case.
        let partitioned = next(8);
        asg.add_instance(GROUP, &partitioned.instance_id, "m5.large", "us-east-1b");
        live_instances.push(partitioned.instance_id.clone());
        let host = rancher.add_host(host_spec(
            "partitioned",
            &partitioned.instance_id,
            true,
            &partitioned.local_ipv4,
        ));
        rancher.lose_agent(&host, Duration::ZERO, Duration::ZERO);
        protected.push(("in service behind a partition (disconnected)", host));

        let unknown = next(8);
        let host = rancher.add_host(host_spec(
            "connected-unknown",
            &unknown.instance_id,
            true,
            &unknown.local_ipv4,
        ));
        protected.push(("connected, its instance unknown to Auto Scaling", host));

        let reconnecting = next(8);
        let host = rancher.add_host(host_spec(
            "reconnecting",
            &reconnecting.instance_id,
            true,
            &reconnecting.local_ipv4,
        ));
        rancher.lose_agent(&host, Duration::ZERO, Duration::from_secs(3600));
        protected.push(("reconnecting, its instance unknown to Auto Scaling", host));

        let no_group = next(8);
        let host = rancher.add_host(host_spec(
            "no-group-label",
            &no_group.instance_id,
            false,
            &no_group.local_ipv4,
        ));
        rancher.lose_agent(&host, Duration::ZERO, Duration::ZERO);
        protected.push(("disconnected without aws.autoscaling_group", host));

        let manual = rancher.add_host(HostSpec {
            hostname: "hand-made".into(),
            ..HostSpec::default()
        });
        rancher.lose_agent(&manual, Duration::ZERO, Duration::ZERO);
        protected.push(("disconnected without labels", manual));

        // One instance, two hosts: an old one disconnected, the current one connected.
        let twin = next(8);
        for (what, lose) in [
            (
                "an instance's old host, disconnected, its new one connected",
                true,
            ),
            (
                "an instance's new host, connected, its old one disconnected",
                false,
            ),
        ] {
            let host =
                rancher.add_host(host_spec("twin", &twin.instance_id, true, &twin.local_ipv4));
            if lose {
                rancher.lose_agent(&host, Duration::ZERO, Duration::ZERO);
            }
            protected.push((what, host));
        }

        let one_shot = match plan.scene {
            ReapScene::TwoReapers => {
                // A cron job's instance: in the group, no host of its own.
                let opts = next(9);
                asg.add_instance(GROUP, &opts.instance_id, "m5.large", "us-east-1b");
                live_instances.push(opts.instance_id.clone());
                Some((opts, &["reap"][..]))
            }
            ReapScene::LateOwnDrover => {
                let opts = late_opts.ok_or("no waiting ghost for the late drover")?;
                Some((opts, &["deregister"][..]))
            }
            _ => None,
        };
        let one_shot = match one_shot {
            Some((opts, args)) => {
                let shot_dir = dir.path().join("one-shot");
                std::fs::create_dir_all(&shot_dir).map_err(|e| e.to_string())?;
                let imds = ImdsServer::start(opts).await;
                if args == ["deregister"] {
                    imds.set_target_lifecycle_state(Some("Terminated"));
                }
                Some(OneShot {
                    imds,
                    dir: shot_dir,
                    args,
                    logs: Vec::new(),
                    drover: None,
                    started: None,
                    exit: None,
                })
            }
            None => None,
        };

        // As the peers will count them: a host of theirs and any other connected labelled one.
        let sweepers = rancher
            .hosts()
            .iter()
            .filter(|h| {
                h.labels.contains_key("aws.instance_id")
                    && h.agent_state.as_deref().is_none_or(|a| a == "active")
            })
            .count();
        let case = ReapCase {
            plan: plan.clone(),
            drover: campaign.drover.clone(),
            docker_host: campaign.docker.docker_host(),
            _dir: dir,
            rancher,
            rancher_proxy,
            asg,
            pager,
            peers,
            dead,
            protected,
            live_instances,
            one_shot,
            clock: None,
            sweepers,
            killed: None,
            healed: None,
        };
        for peer in &case.peers {
            case.write_config(&peer.dir)
                .map_err(|e| format!("config: {e}"))?;
        }
        if let Some(shot) = &case.one_shot {
            case.write_config(&shot.dir)
                .map_err(|e| format!("config: {e}"))?;
        }
        Ok(case)
    }

    /// Every drover of the case runs with the same settings: the reaper on, every
    /// [`INTERVAL`], IMDS polling and the queue off (the reaper is the only source at
    /// work), `lifecycle.on_sigterm` as a fleet leaves it.
    fn write_config(&self, dir: &Path) -> std::io::Result<()> {
        let mut config = base_config(dir, &self.rancher_proxy, &self.rancher, &self.pager, SECRET)?;
        config.rancher.api_version = Some(self.plan.api.into());
        config.lifecycle.imds_poll = Some(Duration::ZERO);
        config.lifecycle.drain_timeout = Some(DRAIN);
        config.reaper.enabled = Some(true);
        config.reaper.interval = Some(INTERVAL);
        config.reaper.max_per_sweep = Some(10);
        config.write(&dir.join("drover.toml"))
    }

    fn endpoints(&self, imds: &ImdsServer) -> Endpoints {
        Endpoints {
            imds: Some(imds.url()),
            autoscaling: Some(self.asg.url()),
            region: Some("us-east-1".into()),
            docker_host: Some(self.docker_host.clone()),
            ..Endpoints::default()
        }
    }

    fn spawn_peer(&mut self, k: usize) -> Result<(), String> {
        let ends = self.endpoints(&self.peers[k].imds);
        let peer = &mut self.peers[k];
        peer.drover = Some(spawn_drover(
            &self.drover,
            &peer.dir,
            &mut peer.logs,
            &ends,
            &["run"],
        )?);
        Ok(())
    }

    fn spawn_one_shot(&mut self) -> Result<(), String> {
        let Some(imds_url) = self.one_shot.as_ref().map(|s| s.imds.url()) else {
            return Ok(());
        };
        let ends = Endpoints {
            imds: Some(imds_url),
            autoscaling: Some(self.asg.url()),
            region: Some("us-east-1".into()),
            docker_host: Some(self.docker_host.clone()),
            ..Endpoints::default()
        };
        if let Some(shot) = self.one_shot.as_mut() {
            shot.drover = Some(spawn_drover(
                &self.drover,
                &shot.dir,
                &mut shot.logs,
                &ends,
                shot.args,
            )?);
            shot.started = Some(Instant::now());
        }
        Ok(())
    }

    /// The faults that meet the sweeps, from the first peer ready on.
    fn inject(&self) {
        let plan = &self.plan;
        for action in ["deactivate", "remove", "purge"] {
            let on = || Match::action(action).method("POST");
            self.rancher.fail(
                on(),
                Fault::Status(plan.rancher_error_status),
                plan.rancher_errors,
            );
            self.rancher.fail(on(), Fault::Status(409), plan.conflicts);
        }
        self.rancher.fail(
            Match::path_end("/hosts").method("GET"),
            Fault::Status(plan.listing_error_status),
            plan.listing_errors,
        );
        self.rancher.fail(
            Match::path_end("/hosts").method("GET").query("marker="),
            Fault::Status(503),
            plan.page_errors,
        );
        if !plan.rancher_latency.is_zero() {
            self.rancher.set_latency(plan.rancher_latency);
        }
        if plan.resets > 0 {
            self.rancher_proxy.reset_next(plan.resets);
        }
        fail_asg(
            &self.asg,
            plan.has(ReapFault::AsgThrottling),
            plan.asg_errors,
        );
        // The sweep's own call besides those of every take-out.
        let fault = if plan.has(ReapFault::AsgThrottling) {
            Fault::Throttling
        } else {
            Fault::Status(503)
        };
        self.asg
            .fail(Match::action("DescribeWarmPool"), fault, plan.asg_errors);
        if plan.scene == ReapScene::AsgOutage {
            let fault = if plan.outage_throttling {
                Fault::Throttling
            } else {
                Fault::Status(503)
            };
            self.asg.fail(Match::any(), fault, usize::MAX);
        }
    }

    /// Starts the fleet, puts the faults in the sweeps' way, and watches until every dead
    /// host is out and every waiting action completed (or the bound and its grace are past),
    /// playing the scene's events on the way.
    async fn play(&mut self) -> Result<(), String> {
        for k in 0..self.peers.len() {
            self.spawn_peer(k)?;
        }
        // The first peer ready: the faults go in before any sweep can begin (the first comes
        // an interval after a peer is ready).
        let spawned = Instant::now();
        let mut first_ready = None;
        loop {
            let now = Instant::now();
            for peer in &mut self.peers {
                let ready = peer
                    .drover
                    .as_ref()
                    .is_some_and(|d| d.notices().contains(&crate::notify::Notice::Ready));
                if ready && peer.ready.is_none() {
                    peer.ready = Some(now);
                }
                if let Some(d) = peer.drover.as_mut() {
                    if let Some(code) = d.exited() {
                        return Err(format!(
                            "a peer's drover exited ({code:?}) before it was ready:\n{}",
                            tail(&d.output(), 20)
                        ));
                    }
                }
            }
            if first_ready.is_none() && self.peers.iter().any(|p| p.ready.is_some()) {
                first_ready = Some(now);
                self.inject();
            }
            if self.peers.iter().all(|p| p.ready.is_some()) {
                break;
            }
            if spawned.elapsed() > READY_LIMIT {
                return Err(format!(
                    "the peers were not all ready within {READY_LIMIT:?}"
                ));
            }
            self.heal_if_due(first_ready);
            tokio::time::sleep(TICK).await;
        }
        let all_ready = Instant::now();
        // The warmed ghosts leave the pool for good now, the fleet up.
        for d in self.dead.iter().filter(|d| d.ghost == Ghost::Warmed) {
            let until = Instant::now() + Duration::from_secs(5);
            while !self.asg.terminate_warmed(&d.instance_id, Duration::ZERO) {
                if Instant::now() > until {
                    return Err(format!(
                        "{} never rested in the warm pool: {:?}",
                        d.instance_id,
                        self.asg.lifecycle_state(&d.instance_id)
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if self.plan.scene != ReapScene::AsgOutage {
            self.clock = Some(all_ready);
        }

        let mut killed_at: Option<Instant> = None;
        let mut restarted: Option<Instant> = None;
        // PeerKilled: the peer whose log first showed the kill's mark, and when.
        let mut marked: Option<(usize, Instant)> = None;
        loop {
            let now = Instant::now();
            self.heal_if_due(first_ready);
            if self.clock.is_none() {
                if let Some(healed) = self.healed {
                    self.clock = Some(healed.max(all_ready));
                }
            }
            let Some(clock) = self.clock else {
                tokio::time::sleep(TICK).await;
                continue;
            };
            // The scene's events.
            if self.plan.scene == ReapScene::PeerKilled {
                if killed_at.is_none() {
                    if let Some(victim) = self.kill_due(clock, &mut marked) {
                        if let Some(mut d) = self.peers[victim].drover.take() {
                            d.kill().await;
                        }
                        self.killed = Some(victim);
                        killed_at = Some(Instant::now());
                    }
                }
                if let (Some(at), Some(victim)) = (killed_at, self.killed) {
                    if restarted.is_none() && now >= at + self.plan.restart_after {
                        self.spawn_peer(victim)?;
                        restarted = Some(Instant::now());
                    }
                }
            }
            if self.one_shot.as_ref().is_some_and(|s| s.started.is_none())
                && self.one_shot_due(clock)
            {
                self.spawn_one_shot()?;
            }
            self.reap_one_shot();
            self.watch_dead();
            let swept = self.sweeps_missing().is_empty();
            let dead_done = self.plan.blind()
                || self
                    .dead
                    .iter()
                    .all(|d| d.out_at.is_some() && (!d.ghost.waits() || d.answered_at.is_some()));
            let shot_done = self.one_shot.as_ref().is_none_or(|s| s.exit.is_some());
            let events_done = self.plan.scene != ReapScene::PeerKilled || restarted.is_some();
            if swept && dead_done && shot_done && events_done {
                break;
            }
            // The bound and its grace; a restarted peer's first sweep (as late as a fresh
            // one's, from its restart) may still have an action to answer.
            let limit = (clock + self.bound())
                .max(restarted.map_or(clock, |r| r + self.first_sweeps_within()));
            if now > limit + GRACE {
                break;
            }
            tokio::time::sleep(TICK).await;
        }
        tokio::time::sleep(SETTLE).await;
        self.watch_dead();
        // A one-shot still running ends within its own limit; how it ends is checked.
        if let Some(shot) = self.one_shot.as_mut() {
            if shot.exit.is_none() {
                if let Some(mut d) = shot.drover.take() {
                    let left = ONE_SHOT_LIMIT
                        .saturating_sub(shot.started.map_or(Duration::ZERO, |s| s.elapsed()));
                    shot.exit = Some(d.wait(left).await.map_err(|e| e.to_string()));
                }
            }
        }
        Ok(())
    }

    /// PeerKilled: the peer to kill now, if its moment has come. A peer's mark (reaping, or
    /// a waiting instance's host out) is looked for in its log; no mark within two and a
    /// half intervals of the fleet's start (the faults held every take-out up) falls back to
    /// the drawn peer.
    fn kill_due(&self, clock: Instant, marked: &mut Option<(usize, Instant)>) -> Option<usize> {
        let now = Instant::now();
        let mark = |peer: &Peer| -> bool {
            let Some(path) = peer.logs.last() else {
                return false;
            };
            let log = std::fs::read_to_string(path).unwrap_or_default();
            match self.plan.kill_at {
                KillAt::Time(_) => false,
                KillAt::Reaping(_) => log.contains("reaping its host"),
                KillAt::OutOfRancher => {
                    let waiting: Vec<&str> = self
                        .dead
                        .iter()
                        .filter(|d| d.ghost.waits())
                        .filter_map(|d| d.host_id.as_deref())
                        .collect();
                    log.lines().any(|l| {
                        l.contains("out of Rancher")
                            && (waiting.is_empty()
                                || waiting.iter().any(|h| l.contains(&format!("host {h} "))))
                    })
                }
            }
        };
        let delay = match self.plan.kill_at {
            KillAt::Time(after) => {
                return (now >= clock + after).then_some(self.plan.victim);
            }
            KillAt::Reaping(delay) => delay,
            KillAt::OutOfRancher => Duration::ZERO,
        };
        if marked.is_none() {
            *marked = self
                .peers
                .iter()
                .position(|p| p.drover.is_some() && mark(p))
                .map(|k| (k, now));
        }
        match *marked {
            Some((k, at)) => (now >= at + delay).then_some(k),
            None => (now >= clock + self.first_sweeps_within() + INTERVAL / 2)
                .then_some(self.plan.victim),
        }
    }

    /// AsgOutage: the outage ends once its time from the first peer ready is up.
    fn heal_if_due(&mut self, first_ready: Option<Instant>) {
        if self.plan.scene != ReapScene::AsgOutage || self.healed.is_some() {
            return;
        }
        if let Some(first) = first_ready {
            if first.elapsed() >= self.plan.outage {
                self.asg.heal();
                self.healed = Some(Instant::now());
            }
        }
    }

    /// Whether the one-shot drover's moment has come: the first take-out action of the
    /// fleet (on its own host, for a late drover), or its time after the fleet's start.
    fn one_shot_due(&self, clock: Instant) -> bool {
        if !self.plan.at_first_action {
            return Instant::now() >= clock + self.plan.one_shot_after;
        }
        let watched: Vec<&str> = match self.plan.scene {
            ReapScene::LateOwnDrover => self
                .dead
                .iter()
                .filter(|d| d.ghost == Ghost::Waiting)
                .take(1)
                .filter_map(|d| d.host_id.as_deref())
                .collect(),
            _ => self
                .dead
                .iter()
                .filter_map(|d| d.host_id.as_deref())
                .collect(),
        };
        let acted = self
            .rancher
            .requests()
            .iter()
            .any(|r| r.method != "GET" && watched.iter().any(|id| names_segment(&r.path, id)));
        // Never later than the first sweeps: a fleet that never acts meets the one-shot anyway.
        acted || Instant::now() >= clock + self.first_sweeps_within()
    }

    /// Notes how a one-shot drover that exited ended.
    fn reap_one_shot(&mut self) {
        if let Some(shot) = self.one_shot.as_mut() {
            if let Some(d) = shot.drover.as_mut() {
                if let Some(code) = d.exited() {
                    shot.exit = Some(Ok(code));
                    shot.drover = None;
                }
            }
        }
    }

    /// Notes when each dead host is first seen out (a warmed instance: answered), and each
    /// waiting action first seen completed.
    fn watch_dead(&mut self) {
        let completions = self.asg.completions();
        let now = Instant::now();
        for d in &mut self.dead {
            let answered = completions
                .iter()
                .any(|c| c.instance_id == d.instance_id && !c.by_timeout);
            if answered && d.answered_at.is_none() {
                d.answered_at = Some(now);
            }
            let out = match &d.host_id {
                Some(id) => self.rancher.host(id).is_none_or(|h| taken_out(&h.state)),
                None => answered,
            };
            if out && d.out_at.is_none() {
                d.out_at = Some(now);
            }
        }
    }

    /// The sweeps the case has yet to see, as violations should it end now. Where a refused
    /// sweep is the evidence (a blind fleet, a blind peer), every peer's (but a killed
    /// one's); elsewhere one, begun at least: the case ends once the dead are out and its
    /// scene played, for the peers' first waits are spread over N intervals and waiting for
    /// the last of them would double a case's time for sweeps that find nothing; but a
    /// one-shot `drover reap` that took everything out first does not make the case.
    fn sweeps_missing(&self) -> Vec<String> {
        if matches!(
            self.plan.scene,
            ReapScene::BlindFleet | ReapScene::BlindPeer
        ) {
            self.peers
                .iter()
                .enumerate()
                .filter(|(k, p)| self.killed != Some(*k) && p.sweeps() == 0)
                .map(|(k, p)| format!("peer {k} ({}) never swept", p.instance_id))
                .collect()
        } else if self.peers.iter().any(Peer::swept_or_reaping) {
            Vec::new()
        } else {
            vec!["no peer swept".to_string()]
        }
    }

    /// The most intervals a peer's first sweep can come after it is ready: its first wait is
    /// spread over `[interval, N × interval]`, N the connected labelled hosts it listed (two
    /// when it listed none).
    fn first_sweep_intervals(&self) -> u32 {
        u32::try_from(self.sweepers.max(2)).unwrap_or(u32::MAX)
    }

    fn first_sweeps_within(&self) -> Duration {
        INTERVAL * self.first_sweep_intervals()
    }

    /// Every dead host out within this of the fleet's start: the first sweeps, and one
    /// interval for the take-out itself.
    fn bound(&self) -> Duration {
        self.first_sweeps_within() + INTERVAL
    }

    /// The latest a dead host was seen out, from the clock.
    fn slowest(&self) -> Option<Duration> {
        let clock = self.clock?;
        self.dead
            .iter()
            .filter_map(|d| d.out_at)
            .map(|at| at.saturating_duration_since(clock))
            .max()
    }

    /// The invariants, checked while the world is as the case left it.
    fn check(&self) -> Vec<String> {
        let mut v = Vec::new();
        let plan = &self.plan;
        let requests = self.rancher.requests();
        let changing: Vec<_> = requests.iter().filter(|r| r.method != "GET").collect();
        let completions: Vec<_> = self
            .asg
            .completions()
            .into_iter()
            .filter(|c| !c.by_timeout)
            .collect();

        // No host the rules leave alone touched.
        for (what, id) in &self.protected {
            match self.rancher.host(id) {
                Some(h) if h.history == ["active"] => {}
                Some(h) => v.push(format!("{what} ({id}) was touched: {:?}", h.history)),
                None => v.push(format!("{what} ({id}) is gone from Rancher")),
            }
            let touching: Vec<String> = changing
                .iter()
                .filter(|r| names_segment(&r.path, id))
                .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
                .collect();
            if !touching.is_empty() {
                v.push(format!("changing requests to {what} ({id}): {touching:?}"));
            }
        }
        for c in &completions {
            if self.live_instances.contains(&c.instance_id)
                || !self
                    .dead
                    .iter()
                    .any(|d| d.instance_id == c.instance_id && d.ghost.waits())
            {
                v.push(format!(
                    "the action of {} ({}) was completed, and no action of it waited",
                    c.instance_id, c.result
                ));
            }
        }

        if plan.blind() {
            if !changing.is_empty() {
                v.push(format!(
                    "Auto Scaling is blind, yet Rancher got {} changing requests: {:?}",
                    changing.len(),
                    changing
                        .iter()
                        .take(5)
                        .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
                        .collect::<Vec<_>>()
                ));
            }
            if !completions.is_empty() {
                v.push(format!(
                    "Auto Scaling is blind, yet {} actions were completed",
                    completions.len()
                ));
            }
        } else {
            let clock = self.clock;
            let bound = self.bound();
            let intervals = self.first_sweep_intervals() + 1;
            for d in &self.dead {
                let what = format!(
                    "dead host {} of {} ({})",
                    d.host_id.as_deref().unwrap_or("-"),
                    d.instance_id,
                    d.ghost.describe()
                );
                match (d.out_at, clock) {
                    (None, _) => v.push(format!("{what} not taken out")),
                    (Some(at), Some(clock)) if at.saturating_duration_since(clock) > bound => {
                        v.push(format!(
                            "{what} out only {:.1?} after the fleet's start, over {intervals} × interval ({bound:?})",
                            at.saturating_duration_since(clock)
                        ));
                    }
                    _ => {}
                }
                if let Some(h) = d.host_id.as_deref().and_then(|id| self.rancher.host(id)) {
                    if h.history
                        .iter()
                        .skip(1)
                        .any(|s| s == "active" || s == "activating")
                    {
                        v.push(format!("{what} came back: {:?}", h.history));
                    }
                }
                if d.ghost.waits() {
                    let mine: Vec<&str> = completions
                        .iter()
                        .filter(|c| c.instance_id == d.instance_id)
                        .map(|c| c.result.as_str())
                        .collect();
                    if mine != ["CONTINUE"] {
                        v.push(format!(
                            "the action of {what} was completed {mine:?}, not once with CONTINUE"
                        ));
                    }
                }
            }
        }
        // Never a completion before Terminating:Wait, nor of an instance not waiting; a
        // race's loser finds the action done (Proceed, Terminated, or the instance gone).
        for r in self.asg.refused_completions() {
            let ours = self
                .dead
                .iter()
                .any(|d| d.instance_id == r.instance_id && d.ghost.waits());
            let after = matches!(
                r.state.as_str(),
                "Terminating:Proceed"
                    | "Terminated"
                    | "Warmed:Terminating:Proceed"
                    | "Warmed:Terminated"
                    | ""
            );
            if !(ours && after) {
                v.push(format!(
                    "CompleteLifecycleAction for {} refused while it was {:?}: {}",
                    r.instance_id, r.state, r.message
                ));
            }
        }
        // An outage: nothing touched, nothing completed, before it ended.
        if let Some(healed) = self.healed {
            let rancher_zero = self.rancher.faults().started();
            let early: Vec<String> = changing
                .iter()
                .filter(|r| rancher_zero + r.at < healed)
                .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
                .collect();
            if !early.is_empty() {
                v.push(format!(
                    "Rancher got changing requests during the Auto Scaling outage: {early:?}"
                ));
            }
            let asg_zero = self.asg.faults().started();
            let early = completions
                .iter()
                .filter(|c| asg_zero + c.at < healed)
                .count();
            if early > 0 {
                v.push(format!(
                    "{early} actions completed during the Auto Scaling outage"
                ));
            }
        }
        // The blind peer refused every sweep it made and reaped nothing itself.
        if plan.scene == ReapScene::BlindPeer {
            let peer = &self.peers[plan.victim];
            let log = read_logs(&peer.logs);
            if log.contains("reaping its host") {
                v.push(format!(
                    "the peer Auto Scaling does not know ({}) reaped a host",
                    peer.instance_id
                ));
            }
            if log.contains("reaper sweep done") {
                v.push(format!(
                    "the peer Auto Scaling does not know ({}) finished a sweep instead of refusing it",
                    peer.instance_id
                ));
            }
        }
        // Every peer that was to sweep swept (else the case did not test what it meant).
        v.extend(self.sweeps_missing());
        // No take-out failed: nobody paged.
        let pages: Vec<String> = self
            .pager
            .events()
            .into_iter()
            .filter(|e| e["event_action"] == "trigger")
            .map(|e| e["payload"]["summary"].as_str().unwrap_or("?").to_string())
            .collect();
        if !pages.is_empty() {
            v.push(format!("paged {} times: {pages:?}", pages.len()));
        }
        // The one-shot drover ended, and well.
        if let Some(shot) = &self.one_shot {
            let what = format!("drover {}", shot.args.join(" "));
            match &shot.exit {
                None if shot.started.is_none() => v.push(format!("{what} was never started")),
                None => v.push(format!("{what} never ended")),
                Some(Err(e)) => v.push(format!("{what}: {}", tail(e, 3))),
                Some(Ok(Some(0))) => {}
                // Refused (or a lookup failed) while Auto Scaling was failing calls.
                Some(Ok(Some(1))) if plan.asg_faults() => {}
                Some(Ok(code)) => v.push(format!(
                    "{what} exited {code:?}:\n{}",
                    tail(&read_logs(&shot.logs), 8)
                )),
            }
        }
        v
    }

    /// Stops every peer the way systemd does, within a bound: each must exit 0.
    async fn stop(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        for peer in &self.peers {
            if let Some(d) = &peer.drover {
                let _ = d.signal(Signal::SIGTERM);
            }
        }
        for (k, peer) in self.peers.iter_mut().enumerate() {
            let Some(mut d) = peer.drover.take() else {
                continue;
            };
            match d.wait(STOP_LIMIT).await {
                Ok(Some(0)) => {}
                Ok(Some(code)) => v.push(format!("peer {k}'s drover exited with {code}")),
                Ok(None) => v.push(format!("peer {k}'s drover was killed by a signal")),
                Err(_) => v.push(format!(
                    "peer {k}'s drover did not exit within {STOP_LIMIT:?} of SIGTERM"
                )),
            }
        }
        if let Some(shot) = self.one_shot.as_mut() {
            if let Some(mut d) = shot.drover.take() {
                d.kill().await;
            }
        }
        v
    }

    /// The last `lines` lines of each process's log, each under its name: the fleet's
    /// processes run side by side, so one tail of them all would show only the last.
    fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut add = |name: String, logs: &[PathBuf]| {
            for (run, path) in logs.iter().enumerate() {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                out.push_str(&format!("--- {name}, run {run}:\n{}\n", tail(&text, lines)));
            }
        };
        for (k, peer) in self.peers.iter().enumerate() {
            add(format!("peer {k} ({})", peer.instance_id), &peer.logs);
        }
        if let Some(shot) = &self.one_shot {
            add(format!("drover {}", shot.args.join(" ")), &shot.logs);
        }
        out
    }

    /// Every process's log, peers first.
    fn log(&self) -> String {
        let mut logs: Vec<PathBuf> = self.peers.iter().flat_map(|p| p.logs.clone()).collect();
        if let Some(shot) = &self.one_shot {
            logs.extend(shot.logs.iter().cloned());
        }
        read_logs(&logs)
    }

    fn check_output(&self) -> Vec<String> {
        let mut everything = self.log();
        // What the one-shots printed too (reap's lines go to stdout).
        for dir in self
            .peers
            .iter()
            .map(|p| &p.dir)
            .chain(self.one_shot.as_ref().map(|s| &s.dir))
        {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    if e.path().extension().is_some_and(|x| x == "stdout") {
                        everything.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                    }
                }
            }
        }
        output_violations(&everything, &[SECRET, ROUTING_KEY])
    }
}

/// Reaper cases by scene.
pub fn cases_by_scene(reports: &[ReapReport]) -> BTreeMap<ReapScene, usize> {
    let mut by = BTreeMap::new();
    for r in reports {
        *by.entry(r.plan.scene).or_insert(0) += 1;
    }
    by
}

/// Faults injected, by kind, over `reports`.
pub fn faults_by_kind(reports: &[ReapReport]) -> BTreeMap<ReapFault, usize> {
    let mut by = BTreeMap::new();
    for r in reports {
        for f in &r.plan.faults {
            *by.entry(*f).or_insert(0) += 1;
        }
    }
    by
}

/// The reaper campaign's summary as Markdown: cases, scenes, faults by kind, the world
/// drawn (API version, pages, ghosts), how long the slowest take-out of a case took, and
/// the violations.
pub fn markdown(reports: &[ReapReport], seeds: &str) -> String {
    let scenes = cases_by_scene(reports)
        .into_iter()
        .map(|(s, n)| (format!("{s:?}"), n));
    let faults = faults_by_kind(reports)
        .into_iter()
        .map(|(f, n)| (f.describe(), n));
    let mut out = summary_of(reports, seeds, "scene", scenes, faults);
    let mut world: BTreeMap<String, usize> = BTreeMap::new();
    for r in reports {
        *world
            .entry(format!("Rancher API {}", r.plan.api))
            .or_insert(0) += 1;
        if r.plan.page_size < 100 {
            *world
                .entry(format!("listings of {} hosts a page", r.plan.page_size))
                .or_insert(0) += 1;
        }
        if r.plan.scene == ReapScene::PeerKilled {
            let at = match r.plan.kill_at {
                KillAt::Time(_) => "at a drawn moment of the first sweeps",
                KillAt::Reaping(_) => "while reaping",
                KillAt::OutOfRancher => "as a waiting instance's host went out",
            };
            *world.entry(format!("peer killed {at}")).or_insert(0) += 1;
        }
        for g in &r.plan.ghosts {
            *world.entry(format!("dead: {}", g.describe())).or_insert(0) += 1;
        }
    }
    out.push_str("\n| world | cases |\n|---|---:|\n");
    for (what, n) in world {
        out.push_str(&format!("| {what} | {n} |\n"));
    }
    let resumed: Vec<u64> = reports
        .iter()
        .filter(|r| r.resumed > 0)
        .map(|r| r.plan.seed)
        .collect();
    out.push_str(&format!(
        "\nCases where a sweep finished a take-out an interrupted sweep had begun: {} (seeds {resumed:?}).\n",
        resumed.len()
    ));
    let mut slowest: Vec<Duration> = reports.iter().filter_map(|r| r.slowest).collect();
    slowest.sort();
    if let (Some(max), false) = (slowest.last(), slowest.is_empty()) {
        let median = slowest[slowest.len() / 2];
        let p95 = slowest[((slowest.len() * 95).div_ceil(100)).clamp(1, slowest.len()) - 1];
        let per = |d: Duration| d.as_secs_f64() / INTERVAL.as_secs_f64();
        let within_three = slowest.iter().filter(|d| **d <= INTERVAL * 3).count();
        let bounds: std::collections::BTreeSet<u64> = reports
            .iter()
            .filter(|r| r.slowest.is_some())
            .map(|r| r.bound.as_secs())
            .collect();
        out.push_str(&format!(
            "\nFrom the fleet's start (or an outage's end) to a case's last dead host out (a warmed instance: answered), over {} cases: median {:.1} s ({:.2} × interval), p95 {:.1} s ({:.2} ×), max {:.1} s ({:.2} ×); within 3 × interval in {within_three}; bound (N + 1) × interval = {bounds:?} s.\n",
            slowest.len(),
            median.as_secs_f64(),
            per(median),
            p95.as_secs_f64(),
            per(p95),
            max.as_secs_f64(),
            per(*max),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_case_and_every_scene_is_drawn() {
        let mut scenes = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let (a, b) = (ReapPlan::from_seed(seed), ReapPlan::from_seed(seed));
            assert_eq!(
                (a.scene, &a.faults, &a.ghosts, a.api),
                (b.scene, &b.faults, &b.ghosts, b.api)
            );
            assert_eq!(a.ghosts[0], Ghost::Gone, "every case has a gone instance");
            if a.scene == ReapScene::LateOwnDrover {
                assert!(a.ghosts.contains(&Ghost::Waiting), "{a:?}");
            }
            scenes.insert(a.scene);
        }
        assert_eq!(scenes.len(), 7, "{scenes:?}");
    }
}
