//! Seeded fault injection: each seed gives one repeatable case (a termination source and a
//! schedule of faults across the stand-ins, drover's kills included), run against the real
//! `drover run`; after each case the invariants drover promises are checked.
//!
//! The same seed always draws the same case. What it cannot fix is the machine's timing:
//! a fault lands at the same point of the schedule, not always at the same instruction of
//! drover, which is the point of running many seeds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::autoscaling::AutoScalingServer;
use crate::bed::{GROUP, HOOK};
use crate::config::{DroverConfig, LogFormat, OnFailure, OnSigterm, Secret};
use crate::docker::DockerEngine;
use crate::http::{Fault, Match};
use crate::imds::{ImdsOptions, ImdsServer};
use crate::launch::{Endpoints, Launcher, Running};
use crate::moto::MotoServer;
use crate::pager::PagerServer;
use crate::proxy::{DockerSocketProxy, ResetProxy, SqsFaultProxy};
use crate::rancher::{RancherOptions, RancherServer};

/// Distinctive, so that a leak anywhere is easy to find.
pub(crate) const SECRET: &str = "s3cr3t-FaultCampaignKey-71c2e9";
pub(crate) const ROUTING_KEY: &str = "R0UT1NGfaultCAMPAIGN0123456789ab";
/// drover's `lifecycle.drain_timeout` when the host is meant to get stuck: short, so that
/// the case fails fast.
const DRAIN_STUCK: Duration = Duration::from_secs(3);
/// drover's `lifecycle.drain_timeout` otherwise: enough for every fault a case injects, so
/// that a host not taken out is drover's failure, not the budget's.
const DRAIN: Duration = Duration::from_secs(60);
/// The most any case may take from its trigger to the completion, beyond the drain: drover's
/// retries with backoff, the fault delays, and a restart after a kill.
pub(crate) const SLACK: Duration = Duration::from_secs(25);
/// How long a case that must change nothing is watched.
const QUIET: Duration = Duration::from_secs(3);
/// How long drover may take to exit after the case's closing SIGTERM.
pub(crate) const STOP_LIMIT: Duration = Duration::from_secs(20);

/// What tells drover that its instance is going away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trigger {
    /// The lifecycle message in SQS only (IMDS lags behind).
    Sqs,
    /// The message and the IMDS target state, racing each other.
    SqsAndImds,
    /// The IMDS target lifecycle state only.
    Imds,
    /// A Spot interruption notice (the group terminates the instance too).
    Spot,
    /// SIGTERM at power-off, with the target state `Terminated` and polling off.
    Sigterm,
    /// A termination message for an instance with no host here: must be left alone.
    Stranger,
    /// A forged message for this instance, which its group shows `InService`.
    Forged,
    /// A message for a plain host of this environment whose instance is in no group.
    NoGroup,
    /// This instance's real termination, in a message carrying the stranger's token (the
    /// stranger terminating too): only this instance's action may be answered.
    StolenToken,
    /// This instance terminating, in a message naming another group.
    WrongGroup,
}

impl Trigger {
    fn terminates_own(self) -> bool {
        !matches!(
            self,
            Trigger::Stranger | Trigger::Forged | Trigger::NoGroup | Trigger::WrongGroup
        )
    }
    fn uses_queue(self) -> bool {
        matches!(
            self,
            Trigger::Sqs
                | Trigger::SqsAndImds
                | Trigger::Stranger
                | Trigger::Forged
                | Trigger::NoGroup
                | Trigger::StolenToken
                | Trigger::WrongGroup
        )
    }
}

/// One kind of fault, for the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    Rancher5xx,
    Rancher409,
    RancherHostGone,
    RancherSlow,
    RancherReset,
    RancherStuckRemoving,
    RancherSlowTransition,
    Imds5xx,
    ImdsTokenExpiry,
    ImdsSlow,
    AsgThrottling,
    AsgUnavailable,
    AsgWaitLag,
    SqsReceiveError,
    SqsDuplicate,
    DockerRestart,
    PagerErrors,
    DroverKilled,
}

impl FaultKind {
    pub fn describe(self) -> &'static str {
        match self {
            FaultKind::Rancher5xx => "Rancher 500/502/503 on take-out actions",
            FaultKind::Rancher409 => "Rancher 409 Conflict on take-out actions",
            FaultKind::RancherHostGone => "host deleted by someone else mid-sequence (404)",
            FaultKind::RancherSlow => "Rancher answering slowly",
            FaultKind::RancherReset => "Rancher connections reset",
            FaultKind::RancherStuckRemoving => "host stuck in removing past drain_timeout",
            FaultKind::RancherSlowTransition => "slow Rancher state transitions",
            FaultKind::Imds5xx => "IMDS 500s",
            FaultKind::ImdsTokenExpiry => "IMDSv2 token expired",
            FaultKind::ImdsSlow => "IMDS answering slowly",
            FaultKind::AsgThrottling => "Auto Scaling Throttling",
            FaultKind::AsgUnavailable => "Auto Scaling 503 ServiceUnavailable",
            FaultKind::AsgWaitLag => "Terminating:Wait reached late (ValidationError before)",
            FaultKind::SqsReceiveError => "SQS ReceiveMessage 500s",
            FaultKind::SqsDuplicate => "lifecycle message delivered twice",
            FaultKind::DockerRestart => "Docker engine away (restarting)",
            FaultKind::PagerErrors => "PagerDuty 429/500 when paging",
            FaultKind::DroverKilled => "drover SIGKILLed and restarted",
        }
    }
}

/// One case, drawn from its seed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub trigger: Trigger,
    pub faults: Vec<FaultKind>,
    rancher_errors: usize,
    rancher_error_status: u16,
    conflicts: usize,
    rancher_latency: Duration,
    transition_delay: Duration,
    imds_errors: usize,
    imds_latency: Duration,
    asg_errors: usize,
    wait_lag: Duration,
    sqs_errors: usize,
    docker_down: Duration,
    pager_errors: usize,
    /// SIGKILLs, each this long after the trigger (or the previous restart).
    kills: Vec<Duration>,
    /// For `Spot` and the message triggers: how long after the start the trigger comes.
    trigger_after: Duration,
}

impl Plan {
    pub fn from_seed(seed: u64) -> Plan {
        let mut rng = StdRng::seed_from_u64(seed);
        let trigger = match rng.random_range(0..24) {
            0..=4 => Trigger::Sqs,
            5..=8 => Trigger::SqsAndImds,
            9..=11 => Trigger::Imds,
            12..=13 => Trigger::Spot,
            14..=15 => Trigger::Sigterm,
            16..=17 => Trigger::Stranger,
            18..=19 => Trigger::Forged,
            20..=21 => Trigger::NoGroup,
            22 => Trigger::StolenToken,
            _ => Trigger::WrongGroup,
        };
        let mut faults = Vec::new();
        let mut pick = |p: f64, kind: FaultKind, rng: &mut StdRng| {
            let on = rng.random_bool(p);
            if on {
                faults.push(kind);
            }
            on
        };
        let mut plan = Plan {
            seed,
            trigger,
            faults: Vec::new(),
            rancher_errors: 0,
            rancher_error_status: 500,
            conflicts: 0,
            rancher_latency: Duration::ZERO,
            transition_delay: Duration::ZERO,
            imds_errors: 0,
            imds_latency: Duration::ZERO,
            asg_errors: 0,
            wait_lag: Duration::ZERO,
            sqs_errors: 0,
            docker_down: Duration::ZERO,
            pager_errors: 0,
            kills: Vec::new(),
            trigger_after: Duration::from_millis(rng.random_range(0..300)),
        };
        if pick(0.3, FaultKind::Rancher5xx, &mut rng) {
            plan.rancher_errors = rng.random_range(1..=3);
            plan.rancher_error_status = [500, 502, 503][rng.random_range(0..3)];
        }
        if pick(0.2, FaultKind::Rancher409, &mut rng) {
            plan.conflicts = rng.random_range(1..=2);
        }
        let gone = trigger.terminates_own() && pick(0.1, FaultKind::RancherHostGone, &mut rng);
        if pick(0.2, FaultKind::RancherSlow, &mut rng) {
            plan.rancher_latency = Duration::from_millis(rng.random_range(50..400));
        }
        pick(0.15, FaultKind::RancherReset, &mut rng);
        // A stuck host and a deleted one are two different stories; one per case.
        if !gone {
            pick(0.1, FaultKind::RancherStuckRemoving, &mut rng);
        }
        if pick(0.3, FaultKind::RancherSlowTransition, &mut rng) {
            plan.transition_delay = Duration::from_millis(rng.random_range(50..800));
        }
        if pick(0.25, FaultKind::Imds5xx, &mut rng) {
            plan.imds_errors = rng.random_range(1..=4);
        }
        pick(0.2, FaultKind::ImdsTokenExpiry, &mut rng);
        if pick(0.15, FaultKind::ImdsSlow, &mut rng) {
            plan.imds_latency = Duration::from_millis(rng.random_range(50..900));
        }
        if pick(0.25, FaultKind::AsgThrottling, &mut rng) {
            plan.asg_errors = rng.random_range(1..=3);
        }
        if plan.asg_errors == 0 && pick(0.15, FaultKind::AsgUnavailable, &mut rng) {
            plan.asg_errors = rng.random_range(1..=3);
        }
        if pick(0.3, FaultKind::AsgWaitLag, &mut rng) {
            plan.wait_lag = Duration::from_millis(rng.random_range(200..2500));
        }
        if trigger.uses_queue() {
            if pick(0.25, FaultKind::SqsReceiveError, &mut rng) {
                plan.sqs_errors = rng.random_range(1..=4);
            }
            if trigger != Trigger::Stranger {
                pick(0.25, FaultKind::SqsDuplicate, &mut rng);
            }
        }
        if pick(0.15, FaultKind::DockerRestart, &mut rng) {
            plan.docker_down = Duration::from_millis(rng.random_range(300..3000));
        }
        if pick(0.2, FaultKind::PagerErrors, &mut rng) {
            plan.pager_errors = rng.random_range(1..=3);
        }
        // A killed drover finds its way back through its state record or IMDS; the queue
        // alone would bring the message back only after its 90 s hidden time.
        if trigger.terminates_own()
            && !matches!(trigger, Trigger::Sqs | Trigger::StolenToken)
            && pick(0.3, FaultKind::DroverKilled, &mut rng)
        {
            let n = if rng.random_bool(0.2) { 2 } else { 1 };
            plan.kills = (0..n)
                .map(|_| Duration::from_millis(rng.random_range(0..1500)))
                .collect();
        }
        plan.faults = faults;
        plan
    }

    /// How many times drover is killed in this case.
    pub fn kills_len(&self) -> usize {
        self.kills.len()
    }

    fn has(&self, kind: FaultKind) -> bool {
        self.faults.contains(&kind)
    }

    fn drain(&self) -> Duration {
        if self.has(FaultKind::RancherStuckRemoving) {
            DRAIN_STUCK
        } else {
            DRAIN
        }
    }
}

/// What one case found.
#[derive(Debug, Clone)]
pub struct CaseReport {
    pub plan: Plan,
    pub violations: Vec<String>,
    pub took: Duration,
    /// drover's logs, for a failing case.
    pub log_tail: String,
}

/// What every case shares: the binary, moto, a Docker engine.
pub struct Campaign {
    pub drover: PathBuf,
    pub moto: MotoServer,
    pub docker: DockerEngine,
}

impl Campaign {
    pub async fn start(drover: &Path) -> Result<Campaign, String> {
        let moto = MotoServer::start()
            .await
            .map_err(|e| format!("moto: {e}"))?;
        let docker = DockerEngine::launch()
            .await
            .map_err(|e| format!("dockerd: {e}"))?;
        Ok(Campaign {
            drover: drover.to_path_buf(),
            moto,
            docker,
        })
    }

    /// Runs `seeds`, `jobs` at a time; reports in seed order.
    pub async fn run(self: &Arc<Self>, seeds: &[u64], jobs: usize) -> Vec<CaseReport> {
        let campaign = self.clone();
        run_seeds(seeds, jobs, move |seed| {
            let campaign = campaign.clone();
            async move { campaign.run_case(Plan::from_seed(seed)).await }
        })
        .await
    }

    pub async fn run_case(&self, plan: Plan) -> CaseReport {
        let started = Instant::now();
        let mut case = match Case::start(self, &plan).await {
            Ok(case) => case,
            Err(e) => {
                return CaseReport {
                    plan,
                    violations: vec![format!("the case could not be set up: {e}")],
                    took: started.elapsed(),
                    log_tail: String::new(),
                }
            }
        };
        let mut violations = match case.play(self).await {
            Ok(()) => Vec::new(),
            Err(e) => vec![e],
        };
        violations.extend(case.check().await);
        violations.extend(case.stop().await);
        violations.extend(case.check_output());
        let log_tail = tail(&case.log(), 40);
        CaseReport {
            plan,
            violations,
            took: started.elapsed(),
            log_tail,
        }
    }
}

/// Runs `case` for every seed, `jobs` at a time; the reports in seed order.
pub(crate) async fn run_seeds<R, F, Fut>(seeds: &[u64], jobs: usize, case: F) -> Vec<R>
where
    R: Outcome + Send + 'static,
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = R> + Send + 'static,
{
    let limit = Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for &seed in seeds {
        let limit = limit.clone();
        let run = case(seed);
        set.spawn(async move {
            let _slot = limit.acquire_owned().await;
            run.await
        });
    }
    let mut reports = Vec::new();
    while let Some(done) = set.join_next().await {
        match done {
            Ok(report) => reports.push(report),
            Err(e) => eprintln!("a case's task failed: {e}"),
        }
    }
    reports.sort_by_key(|r| r.seed());
    reports
}

/// One instance's world for one case.
struct Case {
    plan: Plan,
    dir: tempfile::TempDir,
    own: ImdsOptions,
    bystander: ImdsOptions,
    stranger: ImdsOptions,
    /// A plain host of the environment: its instance is in no group.
    plain: ImdsOptions,
    imds: ImdsServer,
    rancher: RancherServer,
    rancher_proxy: ResetProxy,
    asg: AutoScalingServer,
    pager: PagerServer,
    sqs: SqsFaultProxy,
    docker: DockerSocketProxy,
    queue: String,
    sqs_client: aws_sdk_sqs::Client,
    own_host: String,
    bystander_host: String,
    plain_host: String,
    drover: Option<Running>,
    /// Every run's log file, in order.
    logs: Vec<PathBuf>,
    /// When the trigger was given, and when drover last (re)started.
    triggered: Option<Instant>,
    restarted: Option<Instant>,
}

pub(crate) fn instance(n: u64, region_byte: u64) -> ImdsOptions {
    ImdsOptions {
        instance_id: format!("i-0{n:016x}"),
        local_ipv4: format!("10.{region_byte}.{}.{}", (n / 250) % 250, n % 250 + 2),
        local_hostname: format!(
            "ip-10-{region_byte}-{}-{}.ec2.internal",
            (n / 250) % 250,
            n % 250 + 2
        ),
        ..ImdsOptions::default()
    }
}

pub(crate) fn taken_out(state: &str) -> bool {
    matches!(state, "removed" | "purging" | "purged")
}

impl Case {
    async fn start(campaign: &Campaign, plan: &Plan) -> Result<Case, String> {
        let base = 0x100000 + plan.seed * 3;
        let own = instance(base, 1);
        let bystander = instance(base + 1, 2);
        let stranger = instance(base + 2, 3);
        // Its own instance id: a host labelled with the own instance's id is the own
        // instance's, and taken out with it.
        let plain = instance(0x900000 + plan.seed, 4);
        let imds = ImdsServer::start(own.clone()).await;
        let rancher = RancherServer::start(RancherOptions {
            secret_key: SECRET.into(),
            transition_delay: plan.transition_delay,
            ..RancherOptions::default()
        })
        .await;
        let rancher_proxy = ResetProxy::start(rancher.addr())
            .await
            .map_err(|e| format!("rancher proxy: {e}"))?;
        let asg = AutoScalingServer::start().await;
        crate::bed::add_group(&asg, crate::bed::HOOK_TIMEOUT);
        for i in [&own, &bystander, &stranger] {
            asg.add_instance(GROUP, &i.instance_id, "m5.large", "us-east-1b");
        }
        let own_host = crate::bed::add_active_host(&rancher, &own);
        let bystander_host = crate::bed::add_active_host(&rancher, &bystander);
        let plain_host = crate::bed::add_active_host(&rancher, &plain);
        let pager = PagerServer::start().await;
        let sqs = SqsFaultProxy::start(&campaign.moto.url())
            .await
            .map_err(|e| format!("sqs proxy: {e}"))?;
        let queue = campaign
            .moto
            .create_queue(
                &format!("faults-{}-{}", std::process::id(), plan.seed),
                Some(5),
            )
            .await;
        let dir = tempfile::Builder::new()
            .prefix("drover-faults-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let docker =
            DockerSocketProxy::new(&dir.path().join("docker.sock"), campaign.docker.socket());
        docker.up().map_err(|e| format!("docker proxy: {e}"))?;
        let case = Case {
            plan: plan.clone(),
            dir,
            own,
            bystander,
            stranger,
            plain,
            imds,
            rancher,
            rancher_proxy,
            asg,
            pager,
            sqs,
            docker,
            queue,
            sqs_client: campaign.moto.sqs().await,
            own_host,
            bystander_host,
            plain_host,
            drover: None,
            logs: Vec::new(),
            triggered: None,
            restarted: None,
        };
        case.write_config().map_err(|e| format!("config: {e}"))?;
        Ok(case)
    }

    fn write_config(&self) -> std::io::Result<()> {
        let sigterm = self.plan.trigger == Trigger::Sigterm;
        let mut config = base_config(
            self.dir.path(),
            &self.rancher_proxy,
            &self.rancher,
            &self.pager,
            SECRET,
        )?;
        config.lifecycle.queue_url = (!sigterm).then(|| self.queue.clone());
        config.lifecycle.imds_poll = Some(if sigterm {
            Duration::ZERO
        } else {
            Duration::from_secs(1)
        });
        config.lifecycle.drain_timeout = Some(Duration::from_secs(self.plan.drain().as_secs()));
        config.lifecycle.on_sigterm = Some(OnSigterm::Auto);
        config.write(&self.dir.path().join("drover.toml"))
    }

    /// Every run's log, in order.
    fn log(&self) -> String {
        read_logs(&self.logs)
    }

    fn spawn(&mut self, drover: &Path) -> Result<(), String> {
        // drover's SQS calls go through the fault proxy; Rancher's URL is in the config.
        let ends = endpoints(&self.imds, &self.asg, self.sqs.url(), &self.docker);
        self.drover = Some(spawn_run(drover, self.dir.path(), &mut self.logs, &ends)?);
        self.restarted = Some(Instant::now());
        Ok(())
    }

    fn own_completions(&self) -> usize {
        self.asg
            .completions()
            .iter()
            .filter(|c| c.instance_id == self.own.instance_id && !c.by_timeout)
            .count()
    }

    /// Starts drover, waits until it watches, then gives the trigger with the faults.
    async fn play(&mut self, campaign: &Campaign) -> Result<(), String> {
        let plan = self.plan.clone();
        // Faults that meet drover from its first request on.
        if plan.sqs_errors > 0 {
            self.sqs.fail(
                Match::action("ReceiveMessage"),
                Fault::Status(500),
                plan.sqs_errors,
            );
        }
        self.spawn(&campaign.drover)?;
        if let Some(drover) = self.drover.as_mut() {
            drover.wait_ready(Duration::from_secs(60)).await?;
        }
        tokio::time::sleep(plan.trigger_after).await;

        // Faults that meet the take-out.
        for action in ["deactivate", "remove", "purge"] {
            let on = || Match::action(action).method("POST");
            self.rancher.fail(
                on(),
                Fault::Status(plan.rancher_error_status),
                plan.rancher_errors,
            );
            self.rancher.fail(on(), Fault::Status(409), plan.conflicts);
        }
        if !plan.rancher_latency.is_zero() {
            self.rancher.set_latency(plan.rancher_latency);
        }
        if plan.has(FaultKind::RancherStuckRemoving) {
            self.rancher.stick(&self.own_host, "removing");
        }
        self.imds
            .fail(Match::any(), Fault::Status(500), plan.imds_errors);
        if plan.has(FaultKind::ImdsTokenExpiry) {
            self.imds.expire_tokens();
        }
        if !plan.imds_latency.is_zero() {
            self.imds.set_latency(plan.imds_latency);
        }
        fail_asg(
            &self.asg,
            plan.has(FaultKind::AsgThrottling),
            plan.asg_errors,
        );
        let status = if plan.seed.is_multiple_of(2) {
            429
        } else {
            500
        };
        fail_pager(&self.pager, status, plan.pager_errors);
        if plan.has(FaultKind::RancherReset) {
            self.rancher_proxy.reset_open();
            self.rancher_proxy.reset_next(2);
        }
        let docker_back = if plan.has(FaultKind::DockerRestart) {
            self.docker.down();
            Some(Instant::now() + plan.docker_down)
        } else {
            None
        };

        self.trigger().await?;
        self.triggered = Some(Instant::now());

        if plan.has(FaultKind::RancherHostGone) {
            // Someone removes the host by hand once drover has begun.
            let host = self.own_host.clone();
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                let state = self
                    .rancher
                    .host(&host)
                    .map(|h| h.state)
                    .unwrap_or_default();
                if state != "active" {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.rancher.set_host_state(&host, "purged", None);
        }

        for (i, after) in plan.kills.iter().enumerate() {
            tokio::time::sleep(*after).await;
            if let Some(mut drover) = self.drover.take() {
                drover.kill().await;
            }
            if let Some(back) = docker_back.filter(|b| *b > Instant::now()) {
                // The engine may come back while drover is down, or after.
                if i == 0 && plan.seed.is_multiple_of(2) {
                    tokio::time::sleep_until(back.into()).await;
                    let _ = self.docker.up();
                }
            }
            self.spawn(&campaign.drover)?;
        }

        if let Some(back) = docker_back {
            tokio::time::sleep_until(back.into()).await;
            let _ = self.docker.up();
        }
        if plan.has(FaultKind::RancherStuckRemoving) {
            // Long enough that drover's drain budget runs out, whatever the kills did.
            let give_up = plan.drain() + Duration::from_secs(2);
            let since = self.restarted.unwrap_or_else(Instant::now);
            tokio::time::sleep_until((since + give_up).into()).await;
        }

        if plan.trigger.terminates_own() {
            let limit = plan.drain() + SLACK;
            let from = self.restarted.unwrap_or_else(Instant::now);
            while self.own_completions() == 0 {
                if from.elapsed() > limit {
                    return Err(format!(
                        "no CompleteLifecycleAction for {} within drain_timeout + {SLACK:?} of the last start",
                        self.own.instance_id
                    ));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // A second (wrong) completion or a page would come right after.
            tokio::time::sleep(Duration::from_millis(500)).await;
        } else {
            tokio::time::sleep(QUIET).await;
        }
        Ok(())
    }

    async fn trigger(&mut self) -> Result<(), String> {
        let plan = &self.plan;
        let own = self.own.instance_id.clone();
        let message = |instance: &str, token: &str| {
            crate::autoscaling::termination_message(GROUP, HOOK, instance, token)
        };
        let terminate = |asg: &AutoScalingServer, id: &str| {
            asg.begin_termination(id, plan.wait_lag)
                .ok_or_else(|| "no termination hook".to_string())
        };
        match plan.trigger {
            Trigger::Sqs | Trigger::SqsAndImds => {
                let token = terminate(&self.asg, &own)?;
                if plan.trigger == Trigger::SqsAndImds {
                    self.imds.set_target_lifecycle_state(Some("Terminated"));
                }
                let body = message(&own, &token);
                self.send(&body).await;
                if plan.has(FaultKind::SqsDuplicate) {
                    self.send(&body).await;
                }
            }
            Trigger::Imds => {
                terminate(&self.asg, &own)?;
                self.imds.set_target_lifecycle_state(Some("Terminated"));
            }
            Trigger::Spot => {
                terminate(&self.asg, &own)?;
                let at = std::time::SystemTime::now() + Duration::from_secs(120);
                self.imds.set_spot_action(Some(serde_json::json!({
                    "action": "terminate",
                    "time": humantime::format_rfc3339_seconds(at).to_string(),
                })));
            }
            Trigger::Sigterm => {
                terminate(&self.asg, &own)?;
                self.imds.set_target_lifecycle_state(Some("Terminated"));
                self.signal(nix::sys::signal::Signal::SIGTERM);
            }
            Trigger::Stranger => {
                let stranger = self.stranger.instance_id.clone();
                let token = terminate(&self.asg, &stranger)?;
                self.send(&message(&stranger, &token)).await;
            }
            Trigger::StolenToken => {
                terminate(&self.asg, &own)?;
                let stolen = terminate(&self.asg, &self.stranger.instance_id)?;
                self.send(&message(&own, &stolen)).await;
            }
            Trigger::WrongGroup => {
                let token = terminate(&self.asg, &own)?;
                let body =
                    crate::autoscaling::termination_message("other-group", HOOK, &own, &token);
                self.send(&body).await;
            }
            Trigger::NoGroup => {
                let body = message(
                    &self.plain.instance_id,
                    "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
                );
                self.send(&body).await;
            }
            Trigger::Forged => {
                let body = message(&own, "6f1e2d3c-4b5a-4978-8a9b-0c1d2e3f4a5b");
                self.send(&body).await;
                if plan.has(FaultKind::SqsDuplicate) {
                    self.send(&body).await;
                }
            }
        }
        Ok(())
    }

    async fn send(&self, body: &str) {
        // Straight to moto: the proxy's faults are for drover's calls.
        let _ = self
            .sqs_client
            .send_message()
            .queue_url(&self.queue)
            .message_body(body)
            .send()
            .await;
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(drover) = &self.drover {
            let _ = drover.signal(sig);
        }
    }

    /// The invariants, checked while the world is as the case left it.
    async fn check(&self) -> Vec<String> {
        let mut v = Vec::new();
        let plan = &self.plan;
        let own = &self.own.instance_id;
        let completions: Vec<_> = self
            .asg
            .completions()
            .into_iter()
            .filter(|c| !c.by_timeout)
            .collect();
        let own_done: Vec<_> = completions
            .iter()
            .filter(|c| &c.instance_id == own)
            .collect();
        let host_state = self
            .rancher
            .host(&self.own_host)
            .map(|h| h.state)
            .unwrap_or_else(|| "gone".into());
        let out = taken_out(&host_state) || host_state == "gone";
        let pages: Vec<_> = self
            .pager
            .events()
            .into_iter()
            .filter(|e| e.get("event_action").and_then(|a| a.as_str()) == Some("trigger"))
            .collect();

        if plan.trigger.terminates_own() {
            if own_done.len() != 1 {
                v.push(format!(
                    "hook of {own} completed {} times, not once",
                    own_done.len()
                ));
            }
            let stuck = plan.has(FaultKind::RancherStuckRemoving);
            if stuck == out {
                v.push(format!(
                    "host ended {host_state}: expected {}",
                    if stuck {
                        "not taken out (stuck in removing)"
                    } else {
                        "taken out"
                    }
                ));
            }
            if let Some(c) = own_done.first() {
                let expected = if out { "CONTINUE" } else { "ABANDON" };
                if c.result != expected {
                    v.push(format!(
                        "hook completed with {}, expected {expected} (host {host_state})",
                        c.result
                    ));
                }
            }
            // A page exactly when the take-out failed.
            if out && !pages.is_empty() {
                v.push(format!(
                    "paged {} times for a take-out that worked",
                    pages.len()
                ));
            }
            if !out && pages.is_empty() {
                v.push("the take-out failed and nobody was paged".into());
            }
        } else {
            if !own_done.is_empty() {
                v.push(format!(
                    "{own}'s hook was completed for a {:?} message",
                    plan.trigger
                ));
            }
            if host_state != "active" {
                v.push(format!(
                    "own host is {host_state} after a {:?} message",
                    plan.trigger
                ));
            }
            if !pages.is_empty() {
                v.push(format!("paged {} times though nothing failed", pages.len()));
            }
        }
        // The stranger's hook is none of ours (completed only by its own drover), and the
        // bystander is not even terminating.
        for (who, other) in [("stranger", &self.stranger), ("bystander", &self.bystander)] {
            if completions
                .iter()
                .any(|c| c.instance_id == other.instance_id)
            {
                v.push(format!("the {who}'s hook was completed by this drover"));
            }
        }
        // Never before Terminating:Wait (nor for an instance that is not terminating).
        for r in self.asg.refused_completions() {
            if r.state != "Terminating:Wait" && !r.state.starts_with("Terminating:Proceed") {
                if r.instance_id == *own && plan.trigger.terminates_own() && r.state == "Terminated"
                {
                    continue;
                }
                v.push(format!(
                    "CompleteLifecycleAction for {} while it was {:?}: {}",
                    r.instance_id, r.state, r.message
                ));
            }
        }
        // No host of another instance touched.
        for (who, id) in [
            ("bystander", &self.bystander_host),
            ("plain", &self.plain_host),
        ] {
            let host = self.rancher.host(id);
            if host.as_ref().map(|h| h.state.as_str()) != Some("active") {
                v.push(format!("{who} host {id} is {:?}", host.map(|h| h.state)));
            }
            let touching = self
                .rancher
                .requests()
                .into_iter()
                .filter(|r| r.method != "GET" && names_segment(&r.path, id))
                .count();
            if touching > 0 {
                v.push(format!(
                    "{touching} changing requests to the {who} host {id}"
                ));
            }
        }
        // No message of an instance without a host here (or not terminating) deleted.
        if !plan.trigger.terminates_own() {
            let dlq = format!("{}-dlq", self.queue);
            let client = self.sqs_client.clone();
            let count = |q: String| {
                let client = client.clone();
                async move {
                    client
                        .get_queue_attributes()
                        .queue_url(q)
                        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::All)
                        .send()
                        .await
                        .ok()
                        .and_then(|a| a.attributes)
                        .map(|a| {
                            [
                                "ApproximateNumberOfMessages",
                                "ApproximateNumberOfMessagesNotVisible",
                            ]
                            .iter()
                            .filter_map(|k| {
                                a.get(&aws_sdk_sqs::types::QueueAttributeName::from(*k))
                                    .and_then(|n| n.parse::<u64>().ok())
                            })
                            .sum::<u64>()
                        })
                        .unwrap_or(0)
                }
            };
            let left = count(self.queue.clone()).await + count(dlq).await;
            if left == 0 {
                v.push(format!("the {:?} message was deleted", plan.trigger));
            }
        }
        v
    }

    /// Stops drover the way systemd does, within a bound.
    async fn stop(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        // A Sigterm case's drover exits by itself once the host is out.
        let Some(mut drover) = self.drover.take() else {
            return v;
        };
        if self.plan.trigger != Trigger::Sigterm || !self.plan.kills.is_empty() {
            let _ = drover.signal(nix::sys::signal::Signal::SIGTERM);
        }
        // Past the limit, `wait` kills it.
        match drover.wait(STOP_LIMIT).await {
            Ok(Some(0)) => {}
            Ok(Some(code)) => v.push(format!("drover exited with exit status: {code}")),
            Ok(None) => v.push("drover was killed by a signal".into()),
            Err(_) => v.push(format!(
                "drover did not exit within {STOP_LIMIT:?} of SIGTERM"
            )),
        }
        self.rancher.unstick(&self.own_host);
        v
    }

    fn check_output(&self) -> Vec<String> {
        output_violations(&self.log(), &[SECRET, ROUTING_KEY])
    }
}

/// drover's config as every case starts it: Rancher through `rancher_url` (a resetting
/// proxy) with the key in a file holding `secret`, no privileged containers, a 60 s
/// registration budget, `on_failure = "abandon"`, paging to the case's pager, the state
/// dir and the config in `dir`, JSON logs at debug.
pub(crate) fn base_config(
    dir: &Path,
    rancher_url: &ResetProxy,
    rancher: &RancherServer,
    pager: &PagerServer,
    secret: &str,
) -> std::io::Result<DroverConfig> {
    let file = dir.join("rancher.secret");
    crate::config::write_private(&file, secret.as_bytes())?;
    let mut config = DroverConfig::default();
    config.rancher.url = Some(rancher_url.url());
    config.rancher.project_id = Some(rancher.project_id().to_string());
    config.rancher.access_key = Some(rancher.access_key().to_string());
    config.rancher.secret_key = Some(Secret::File(file));
    config.agent.privileged = Some(false);
    config.agent.register_timeout = Some(Duration::from_secs(60));
    config.lifecycle.on_failure = Some(OnFailure::Abandon);
    config.pager.routing_key = Some(Secret::Inline(ROUTING_KEY.into()));
    config.pager.pagerduty_url = Some(pager.enqueue_url());
    config.state.dir = Some(dir.join("state"));
    config.log.format = Some(LogFormat::Json);
    config.log.level = Some("debug".into());
    Ok(config)
}

/// The next `times` calls of each action drover makes of Auto Scaling fail, throttled or
/// with 503.
pub(crate) fn fail_asg(asg: &AutoScalingServer, throttling: bool, times: usize) {
    let fault = if throttling {
        Fault::Throttling
    } else {
        Fault::Status(503)
    };
    for action in [
        "CompleteLifecycleAction",
        "DescribeAutoScalingInstances",
        "DescribeLifecycleHooks",
    ] {
        asg.fail(Match::action(action), fault, times);
    }
}

/// The next `times` pages are answered `status`.
pub(crate) fn fail_pager(pager: &PagerServer, status: u16, times: usize) {
    pager.fail(
        Match::path(crate::pager::ENQUEUE),
        Fault::Status(status),
        times,
    );
}

/// Where a case's drover finds the stand-ins.
pub(crate) fn endpoints(
    imds: &ImdsServer,
    asg: &AutoScalingServer,
    sqs: String,
    docker: &DockerSocketProxy,
) -> Endpoints {
    Endpoints {
        imds: Some(imds.url()),
        autoscaling: Some(asg.url()),
        sqs: Some(sqs),
        region: Some("us-east-1".into()),
        docker_host: Some(docker.docker_host()),
        ..Endpoints::default()
    }
}

/// Starts `drover run` with the config in `dir`; its log is added to `logs`.
pub(crate) fn spawn_run(
    drover: &Path,
    dir: &Path,
    logs: &mut Vec<PathBuf>,
    ends: &Endpoints,
) -> Result<Running, String> {
    spawn_drover(drover, dir, logs, ends, &["run"])
}

/// Starts `drover <args>` (`run`, `reap`, `deregister`, ...) with the config in `dir`; its
/// output goes to files in `dir` named after the number of logs so far (every process of a
/// case has files of its own), and its log is added to `logs`.
pub(crate) fn spawn_drover(
    drover: &Path,
    dir: &Path,
    logs: &mut Vec<PathBuf>,
    ends: &Endpoints,
    args: &[&str],
) -> Result<Running, String> {
    let running = Launcher::new(drover, dir, &format!("drover-{}", logs.len()))
        .config(&dir.join("drover.toml"))
        .endpoints(ends)
        .args(args)
        .spawn()?;
    logs.extend(running.stderr_path().map(Path::to_path_buf));
    Ok(running)
}

/// Whether a request `path` names `id` as one whole segment: `/v2-beta/projects/1a5/hosts/1h1`
/// names `1h1`, and neither `1h10` nor `11h1`.
pub(crate) fn names_segment(path: &str, id: &str) -> bool {
    !id.is_empty() && path.split('/').any(|segment| segment == id)
}

/// Every run's log, in order.
pub(crate) fn read_logs(logs: &[PathBuf]) -> String {
    logs.iter()
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A secret or a panic in drover's output.
pub(crate) fn output_violations(log: &str, secrets: &[&str]) -> Vec<String> {
    let mut v = Vec::new();
    for secret in secrets {
        if log.contains(secret) {
            v.push("a secret appears in drover's output".into());
        }
    }
    if log.contains("panicked") {
        v.push("drover panicked".into());
    }
    v
}

pub(crate) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Faults injected, by kind, over `reports`.
pub fn faults_by_kind(reports: &[CaseReport]) -> BTreeMap<FaultKind, usize> {
    let mut by_kind = BTreeMap::new();
    for r in reports {
        for f in &r.plan.faults {
            *by_kind.entry(*f).or_insert(0) += 1;
        }
    }
    by_kind
}

/// Cases by trigger.
pub fn cases_by_trigger(reports: &[CaseReport]) -> BTreeMap<Trigger, usize> {
    let mut by = BTreeMap::new();
    for r in reports {
        *by.entry(r.plan.trigger).or_insert(0) += 1;
    }
    by
}

/// What a summary needs of a case's report, whichever campaign ran it.
pub trait Outcome {
    fn seed(&self) -> u64;
    /// The trigger and the faults, as a violation line names them.
    fn label(&self) -> String;
    fn violations(&self) -> &[String];
    fn took(&self) -> Duration;
    fn log_tail(&self) -> &str;
}

/// [`Outcome`] for a report with `plan` (`seed`, `trigger`, `faults`), `violations`,
/// `took` and `log_tail`; its label the trigger and the faults, then whatever `extra` (a
/// function of the report) adds.
macro_rules! outcome {
    ($report:ty) => {
        $crate::faults::outcome!($report, |_: &$report| String::new());
    };
    ($report:ty, $extra:expr) => {
        impl $crate::faults::Outcome for $report {
            fn seed(&self) -> u64 {
                self.plan.seed
            }
            fn label(&self) -> String {
                let extra: String = ($extra)(self);
                format!("{:?}, {:?}{extra}", self.plan.trigger, self.plan.faults)
            }
            fn violations(&self) -> &[String] {
                &self.violations
            }
            fn took(&self) -> std::time::Duration {
                self.took
            }
            fn log_tail(&self) -> &str {
                &self.log_tail
            }
        }
    };
}
pub(crate) use outcome;

// A failing case's kills are part of what it was: the label says how many.
outcome!(CaseReport, |r: &CaseReport| match r.plan.kills_len() {
    0 => String::new(),
    n => format!(", {n} kill(s)"),
});

/// The summary as Markdown: cases, triggers, faults by kind, violations.
pub fn markdown(reports: &[CaseReport], seeds: &str) -> String {
    let triggers = cases_by_trigger(reports)
        .into_iter()
        .map(|(t, n)| (format!("{t:?}"), n));
    let faults = faults_by_kind(reports)
        .into_iter()
        .map(|(f, n)| (f.describe(), n));
    summary(reports, seeds, triggers, faults)
}

/// The summary of any campaign: cases, `triggers` and `faults` counted, violations.
pub(crate) fn summary<R: Outcome>(
    reports: &[R],
    seeds: &str,
    triggers: impl IntoIterator<Item = (String, usize)>,
    faults: impl IntoIterator<Item = (&'static str, usize)>,
) -> String {
    summary_of(reports, seeds, "trigger", triggers, faults)
}

/// [`summary`], with the first table's heading (`trigger`, `scene`) given.
pub(crate) fn summary_of<R: Outcome>(
    reports: &[R],
    seeds: &str,
    heading: &str,
    triggers: impl IntoIterator<Item = (String, usize)>,
    faults: impl IntoIterator<Item = (&'static str, usize)>,
) -> String {
    let mut out = String::new();
    let violations: usize = reports.iter().map(|r| r.violations().len()).sum();
    let took: Duration = reports.iter().map(|r| r.took()).sum();
    out.push_str(&format!(
        "Seeds {seeds}: {} cases, {} invariant violations, {:.0} case-seconds.\n\n",
        reports.len(),
        violations,
        took.as_secs_f64()
    ));
    out.push_str(&format!("| {heading} | cases |\n|---|---:|\n"));
    for (t, n) in triggers {
        out.push_str(&format!("| {t} | {n} |\n"));
    }
    out.push_str("\n| fault | cases with it |\n|---|---:|\n");
    for (f, n) in faults {
        out.push_str(&format!("| {f} | {n} |\n"));
    }
    let failing: Vec<_> = reports
        .iter()
        .filter(|r| !r.violations().is_empty())
        .collect();
    if !failing.is_empty() {
        out.push_str("\nViolations:\n\n");
        for r in failing {
            for v in r.violations() {
                out.push_str(&format!("- seed {} ({}): {v}\n", r.seed(), r.label()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_case_is_labelled_with_its_trigger_faults_and_kills() {
        let mut plan = Plan::from_seed(0);
        plan.kills = vec![Duration::from_millis(300), Duration::from_secs(1)];
        let report = CaseReport {
            plan: plan.clone(),
            violations: Vec::new(),
            took: Duration::ZERO,
            log_tail: String::new(),
        };
        let label = report.label();
        assert!(
            label.starts_with(&format!("{:?}, ", plan.trigger)),
            "{label}"
        );
        assert!(label.ends_with(", 2 kill(s)"), "{label}");
        plan.kills.clear();
        let report = CaseReport { plan, ..report };
        assert!(!report.label().contains("kill(s)"), "{}", report.label());
    }

    #[test]
    fn a_host_is_named_by_a_whole_path_segment() {
        let path = "/v2-beta/projects/1a5/hosts/1h10";
        assert!(names_segment(path, "1h10"));
        assert!(!names_segment(path, "1h1"), "1h1 is not 1h10");
        assert!(!names_segment("/v1/projects/1a5/hosts/11h1", "1h1"));
        assert!(names_segment("/v1/projects/1a5/hosts/1h1/instances", "1h1"));
        assert!(!names_segment(path, ""));
    }

    #[test]
    fn the_same_seed_draws_the_same_case() {
        for seed in [0, 7, 199] {
            let (a, b) = (Plan::from_seed(seed), Plan::from_seed(seed));
            assert_eq!((a.trigger, &a.faults), (b.trigger, &b.faults));
        }
    }
}
