//! Boot cases of the seeded fault campaign: the instance launches into its group held by a
//! launching hook, `drover run` starts with no host in Rancher yet, and faults and a trigger
//! meet the registration under way (Rancher, Docker, IMDS, Auto Scaling and the pager
//! failing; a refused key, a stop, a termination, a kill). After each case the promises of
//! the way in are checked: the launching action answered once and rightly, a page exactly
//! when the boot failed, nothing left running or registered after a power-off or a
//! termination, drover gone in time, no secret in its output.
//!
//! Boot seeds are drawn apart from [`crate::faults::Plan`]'s: seed `n` here has nothing to
//! do with seed `n` there, and adding boot cases changed nothing those seeds draw.
//!
//! Cases share the campaign's moto. They do not share a Docker engine while they run: a
//! take-out stops every bootstrap container drover labelled and *the* `rancher-agent`
//! container (one per engine, as on a real host), so two boots on one engine stop each
//! other's agents. Each running case has an engine to itself, taken from a pool that
//! starts with the campaign's own and grows to the number of cases run at a time.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::autoscaling::{AutoScalingServer, LAUNCHING, TERMINATING};
use crate::bed::{GROUP, LAUNCH_HOOK};
use crate::config::OnSigterm;
use crate::docker::DockerEngine;
use crate::faults::{
    base_config, endpoints, fail_asg, fail_pager, instance, output_violations, read_logs,
    run_seeds, spawn_run, summary, tail, taken_out, Campaign, ROUTING_KEY, SECRET, SLACK,
    STOP_LIMIT,
};
use crate::http::{Fault, Match};
use crate::imds::ImdsServer;
use crate::launch::Running;
use crate::pager::PagerServer;
use crate::proxy::{DockerSocketProxy, ResetProxy};
use crate::rancher::{RancherOptions, RancherServer};

/// drover's `agent.register_timeout` in a boot case: far more than any fault here delays
/// a registration by, so that a boot that fails is drover's failure, not the budget's.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(40);
/// drover's `lifecycle.drain_timeout`: enough for every fault a boot case injects.
const DRAIN: Duration = Duration::from_secs(30);
/// How long drover may take to be gone after SIGTERM at power-off or a plain stop.
const STOP_PROMPT: Duration = Duration::from_secs(15);
/// The wrong key of a refused-key case: a secret too, which must not leak either.
const WRONG_SECRET: &str = "wr0ng-BootCampaignKey-5d4c3b";
/// How long a second completion or a page would take to come after the first answer.
const SETTLE: Duration = Duration::from_millis(700);

/// What meets the registration under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum BootTrigger {
    /// Nothing: the registration must succeed.
    None,
    /// Rancher refuses the key (a wrong secret): the registration must fail.
    WrongKey,
    /// SIGTERM at power-off (`on_sigterm = "deregister"`) during registration.
    PowerOff,
    /// A plain SIGTERM (`on_sigterm = "exit"`): a reboot or `systemctl stop`.
    PlainStop,
    /// The launch abandoned by hand, the group terminating, IMDS saying `Terminated`.
    ImdsTerminated,
    /// A Spot interruption notice; the launch abandoned by hand, the group terminating.
    Spot,
    /// SIGKILL mid-registration, then a restart with the launching action still waiting.
    KillRestart,
}

impl BootTrigger {
    /// The registration must end with the host active and `CONTINUE`.
    fn must_register(self) -> bool {
        matches!(self, BootTrigger::None | BootTrigger::KillRestart)
    }
    /// A termination of the instance (the termination hook is answered).
    fn terminates(self) -> bool {
        matches!(self, BootTrigger::ImdsTerminated | BootTrigger::Spot)
    }
    /// drover takes whatever host there is out.
    fn takes_out(self) -> bool {
        self.terminates() || self == BootTrigger::PowerOff
    }
    /// drover gets the SIGTERM as the trigger.
    fn stops(self) -> bool {
        matches!(self, BootTrigger::PowerOff | BootTrigger::PlainStop)
    }
}

/// One kind of fault met while registering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BootFault {
    Rancher5xx,
    Rancher409,
    RancherSlow,
    RancherReset,
    DockerAway,
    Imds5xx,
    ImdsSlow,
    ImdsTokenExpiry,
    AsgThrottling,
    AsgUnavailable,
    PagerErrors,
    /// The launching hook's heartbeat timeout (30 s) shorter than the registration budget.
    ShortLaunchHook,
}

impl BootFault {
    pub fn describe(self) -> &'static str {
        match self {
            BootFault::Rancher5xx => "Rancher 500/502/503 on token and host-list calls",
            BootFault::Rancher409 => "Rancher 409 Conflict creating the registration token",
            BootFault::RancherSlow => "Rancher answering slowly",
            BootFault::RancherReset => "Rancher connections reset",
            BootFault::DockerAway => "Docker engine away at boot",
            BootFault::Imds5xx => "IMDS 500s",
            BootFault::ImdsSlow => "IMDS answering slowly",
            BootFault::ImdsTokenExpiry => "IMDSv2 token expired mid-registration",
            BootFault::AsgThrottling => "Auto Scaling Throttling",
            BootFault::AsgUnavailable => "Auto Scaling 503 ServiceUnavailable",
            BootFault::PagerErrors => "PagerDuty 429/500 when paging",
            BootFault::ShortLaunchHook => "launching hook timeout 30 s (heartbeats)",
        }
    }
}

/// One boot case, drawn from its seed.
#[derive(Debug, Clone)]
pub struct BootPlan {
    pub seed: u64,
    pub trigger: BootTrigger,
    pub faults: Vec<BootFault>,
    /// The Rancher stand-in's `register_delay`: how long a new host stays `registering`.
    pub register_delay: Duration,
    /// From drover's start to the trigger.
    pub trigger_after: Duration,
    /// KillRestart: from the kill to the restart.
    restart_after: Duration,
    rancher_errors: usize,
    rancher_error_status: u16,
    conflicts: usize,
    rancher_latency: Duration,
    resets: usize,
    docker_away: Duration,
    imds_errors: usize,
    imds_latency: Duration,
    asg_errors: usize,
    pager_errors: usize,
    pager_status: u16,
}

/// Mixed into a boot seed, so that boot seed `n` draws nothing like termination seed `n`.
const BOOT_STREAM: u64 = 0xB007_5EED_0000_0000;

impl BootPlan {
    pub fn from_seed(seed: u64) -> BootPlan {
        let mut rng = StdRng::seed_from_u64(seed ^ BOOT_STREAM);
        let trigger = match rng.random_range(0..18) {
            0..=2 => BootTrigger::None,
            3..=4 => BootTrigger::WrongKey,
            5..=7 => BootTrigger::PowerOff,
            8..=9 => BootTrigger::PlainStop,
            10..=12 => BootTrigger::ImdsTerminated,
            13..=14 => BootTrigger::Spot,
            _ => BootTrigger::KillRestart,
        };
        let register_delay = Duration::from_millis(rng.random_range(2000..4500));
        // Drawn over the whole registration: the token and the bootstrap (the first
        // seconds), the host registering (`register_delay`), a little past it turning active.
        let trigger_after =
            Duration::from_millis(rng.random_range(800..register_delay.as_millis() as u64 + 4000));
        let mut plan = BootPlan {
            seed,
            trigger,
            faults: Vec::new(),
            register_delay,
            trigger_after,
            restart_after: Duration::from_millis(rng.random_range(0..1500)),
            rancher_errors: 0,
            rancher_error_status: 500,
            conflicts: 0,
            rancher_latency: Duration::ZERO,
            resets: 0,
            docker_away: Duration::ZERO,
            imds_errors: 0,
            imds_latency: Duration::ZERO,
            asg_errors: 0,
            pager_errors: 0,
            pager_status: 500,
        };
        let mut faults = Vec::new();
        let mut pick = |p: f64, kind: BootFault, rng: &mut StdRng| {
            let on = rng.random_bool(p);
            if on {
                faults.push(kind);
            }
            on
        };
        if pick(0.3, BootFault::Rancher5xx, &mut rng) {
            plan.rancher_errors = rng.random_range(1..=3);
            plan.rancher_error_status = [500, 502, 503][rng.random_range(0..3)];
        }
        if pick(0.2, BootFault::Rancher409, &mut rng) {
            plan.conflicts = rng.random_range(1..=2);
        }
        if pick(0.2, BootFault::RancherSlow, &mut rng) {
            plan.rancher_latency = Duration::from_millis(rng.random_range(50..400));
        }
        if pick(0.15, BootFault::RancherReset, &mut rng) {
            plan.resets = rng.random_range(1..=3);
        }
        if pick(0.2, BootFault::DockerAway, &mut rng) {
            plan.docker_away = Duration::from_millis(rng.random_range(300..3000));
        }
        if pick(0.25, BootFault::Imds5xx, &mut rng) {
            plan.imds_errors = rng.random_range(1..=4);
        }
        if pick(0.15, BootFault::ImdsSlow, &mut rng) {
            plan.imds_latency = Duration::from_millis(rng.random_range(50..600));
        }
        pick(0.2, BootFault::ImdsTokenExpiry, &mut rng);
        if pick(0.25, BootFault::AsgThrottling, &mut rng) {
            plan.asg_errors = rng.random_range(1..=3);
        }
        if plan.asg_errors == 0 && pick(0.15, BootFault::AsgUnavailable, &mut rng) {
            plan.asg_errors = rng.random_range(1..=3);
        }
        if pick(0.3, BootFault::PagerErrors, &mut rng) {
            plan.pager_errors = rng.random_range(1..=3);
            plan.pager_status = if rng.random_bool(0.5) { 429 } else { 500 };
        }
        pick(0.3, BootFault::ShortLaunchHook, &mut rng);
        plan.faults = faults;
        plan
    }

    fn has(&self, kind: BootFault) -> bool {
        self.faults.contains(&kind)
    }

    fn launch_timeout(&self) -> Duration {
        if self.has(BootFault::ShortLaunchHook) {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(300)
        }
    }
}

/// What one boot case found.
#[derive(Debug, Clone)]
pub struct BootReport {
    pub plan: BootPlan,
    pub violations: Vec<String>,
    pub took: Duration,
    /// drover's logs, for a failing case.
    pub log_tail: String,
    /// Where the registration was when the trigger came (see [`BootCase::phase`]).
    pub phase: &'static str,
}

crate::faults::outcome!(BootReport);

/// The boot campaign: the campaign's binary and moto, and Docker engines one case at a
/// time each (the campaign's own first).
pub struct BootCampaign {
    pub campaign: Arc<Campaign>,
    /// Whether the campaign's own engine is free.
    shared_free: Mutex<bool>,
    spare: Mutex<Vec<Arc<DockerEngine>>>,
}

/// An engine lent to one case.
enum Lease {
    Shared,
    Own(Arc<DockerEngine>),
}

impl BootCampaign {
    pub fn new(campaign: Arc<Campaign>) -> BootCampaign {
        BootCampaign {
            campaign,
            shared_free: Mutex::new(true),
            spare: Mutex::new(Vec::new()),
        }
    }

    /// Runs boot `seeds`, `jobs` at a time; reports in seed order.
    pub async fn run(self: &Arc<Self>, seeds: &[u64], jobs: usize) -> Vec<BootReport> {
        let boot = self.clone();
        run_seeds(seeds, jobs, move |seed| {
            let boot = boot.clone();
            async move { boot.run_case(BootPlan::from_seed(seed)).await }
        })
        .await
    }

    async fn lease(&self) -> Result<Lease, String> {
        {
            let mut free = self.shared_free.lock().unwrap_or_else(|e| e.into_inner());
            if *free {
                *free = false;
                return Ok(Lease::Shared);
            }
        }
        let spare = self.spare.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match spare {
            Some(engine) => Ok(Lease::Own(engine)),
            None => DockerEngine::launch()
                .await
                .map(|e| Lease::Own(Arc::new(e)))
                .map_err(|e| format!("dockerd: {e}")),
        }
    }

    fn give_back(&self, lease: Lease) {
        match lease {
            Lease::Shared => *self.shared_free.lock().unwrap_or_else(|e| e.into_inner()) = true,
            Lease::Own(engine) => self
                .spare
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(engine),
        }
    }

    pub async fn run_case(&self, plan: BootPlan) -> BootReport {
        let started = Instant::now();
        let lease = match self.lease().await {
            Ok(lease) => lease,
            Err(e) => return failed_setup(plan, started, e),
        };
        let engine = match &lease {
            Lease::Shared => &self.campaign.docker,
            Lease::Own(engine) => engine.as_ref(),
        };
        // A fresh host: no agent, no bootstrap from the case before.
        engine.remove_all_containers().await;
        let report = self.play_case(plan, engine, started).await;
        engine.remove_all_containers().await;
        self.give_back(lease);
        report
    }

    async fn play_case(
        &self,
        plan: BootPlan,
        engine: &DockerEngine,
        started: Instant,
    ) -> BootReport {
        let mut case = match BootCase::start(&self.campaign, &plan, engine).await {
            Ok(case) => case,
            Err(e) => return failed_setup(plan, started, e),
        };
        let mut violations = match case.play(&self.campaign).await {
            Ok(()) => Vec::new(),
            Err(e) => vec![e],
        };
        violations.extend(case.stop().await);
        violations.extend(case.check(engine).await);
        violations.extend(case.check_output());
        let log_tail = tail(&read_logs(&case.logs), 40);
        BootReport {
            plan,
            violations,
            took: started.elapsed(),
            log_tail,
            phase: case.phase,
        }
    }
}

fn failed_setup(plan: BootPlan, started: Instant, e: String) -> BootReport {
    BootReport {
        plan,
        violations: vec![format!("the case could not be set up: {e}")],
        took: started.elapsed(),
        log_tail: String::new(),
        phase: "not set up",
    }
}

/// One launching instance's world for one boot case.
struct BootCase {
    plan: BootPlan,
    dir: tempfile::TempDir,
    instance_id: String,
    imds: ImdsServer,
    rancher: RancherServer,
    rancher_proxy: ResetProxy,
    asg: AutoScalingServer,
    pager: PagerServer,
    docker: DockerSocketProxy,
    queue: String,
    drover: Option<Running>,
    logs: Vec<PathBuf>,
    /// The launching action was ended by hand (ABANDON, by token) for a termination.
    abandoned_by_hand: bool,
    /// When drover got the SIGTERM of a stop trigger, and how it ended after it.
    stop_sent: Option<Instant>,
    /// Where the registration was when the trigger came.
    phase: &'static str,
    /// drover's exit: status (`None`: by a signal) and how long after the SIGTERM of a
    /// stop trigger; `Err` when it did not exit in time.
    exit: Option<Result<(Option<i32>, Duration), Duration>>,
}

impl BootCase {
    async fn start(
        campaign: &Campaign,
        plan: &BootPlan,
        engine: &DockerEngine,
    ) -> Result<BootCase, String> {
        let own = instance(0x500000 + plan.seed, 5);
        let instance_id = own.instance_id.clone();
        let imds = ImdsServer::start(own).await;
        let rancher = RancherServer::start(RancherOptions {
            secret_key: SECRET.into(),
            token_create_delay: Duration::from_millis(500),
            register_delay: plan.register_delay,
            ..RancherOptions::default()
        })
        .await;
        // The agent's side watches the engine itself, not drover's way to it.
        rancher.watch_docker(engine.socket());
        let rancher_proxy = ResetProxy::start(rancher.addr())
            .await
            .map_err(|e| format!("rancher proxy: {e}"))?;
        let asg = AutoScalingServer::start().await;
        crate::bed::add_group(&asg, crate::bed::HOOK_TIMEOUT);
        crate::bed::launch_into_group(&asg, &instance_id, plan.launch_timeout());
        let pager = PagerServer::start().await;
        let queue = campaign
            .moto
            .create_queue(
                &format!("boot-{}-{}", std::process::id(), plan.seed),
                Some(5),
            )
            .await;
        let dir = tempfile::Builder::new()
            .prefix("drover-boot-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let docker = DockerSocketProxy::new(&dir.path().join("docker.sock"), engine.socket());
        let case = BootCase {
            plan: plan.clone(),
            dir,
            instance_id,
            imds,
            rancher,
            rancher_proxy,
            asg,
            pager,
            docker,
            queue,
            drover: None,
            logs: Vec::new(),
            abandoned_by_hand: false,
            stop_sent: None,
            exit: None,
            phase: "",
        };
        case.write_config().map_err(|e| format!("config: {e}"))?;
        Ok(case)
    }

    fn write_config(&self) -> std::io::Result<()> {
        let secret = if self.plan.trigger == BootTrigger::WrongKey {
            WRONG_SECRET
        } else {
            SECRET
        };
        let mut config = base_config(
            self.dir.path(),
            &self.rancher_proxy,
            &self.rancher,
            &self.pager,
            secret,
        )?;
        config.agent.register_timeout = Some(REGISTER_TIMEOUT);
        config.lifecycle.queue_url = Some(self.queue.clone());
        config.lifecycle.imds_poll = Some(Duration::from_millis(500));
        config.lifecycle.drain_timeout = Some(DRAIN);
        config.lifecycle.on_sigterm = Some(match self.plan.trigger {
            // The power-off.
            BootTrigger::PowerOff => OnSigterm::Deregister,
            BootTrigger::PlainStop => OnSigterm::Exit,
            _ => OnSigterm::Auto,
        });
        config.write(&self.dir.path().join("drover.toml"))
    }

    fn spawn(&mut self, campaign: &Campaign) -> Result<(), String> {
        let ends = endpoints(&self.imds, &self.asg, campaign.moto.url(), &self.docker);
        self.drover = Some(spawn_run(
            &campaign.drover,
            self.dir.path(),
            &mut self.logs,
            &ends,
        )?);
        Ok(())
    }

    /// Completions of this instance's actions of `transition`, by drover (by instance id,
    /// not by the token a hand used, not by timeout).
    fn drover_completions(&self, transition: &str) -> Vec<String> {
        self.asg
            .completions()
            .into_iter()
            .filter(|c| c.instance_id == self.instance_id && c.transition == transition)
            .filter(|c| !c.by_token && !c.by_timeout)
            .map(|c| c.result)
            .collect()
    }

    /// Starts drover with the faults in place, gives the trigger mid-registration, and
    /// waits for what the trigger calls for.
    async fn play(&mut self, campaign: &Campaign) -> Result<(), String> {
        let plan = self.plan.clone();
        // Faults that meet the registration from drover's first request on.
        for part in ["/registrationtokens", "/hosts"] {
            self.rancher.fail(
                Match::path(part).method("GET"),
                Fault::Status(plan.rancher_error_status),
                plan.rancher_errors,
            );
        }
        self.rancher.fail(
            Match::path("/registrationtokens").method("POST"),
            Fault::Status(409),
            plan.conflicts,
        );
        self.rancher.set_latency(plan.rancher_latency);
        self.rancher_proxy.reset_next(plan.resets);
        self.imds
            .fail(Match::any(), Fault::Status(500), plan.imds_errors);
        self.imds.set_latency(plan.imds_latency);
        fail_asg(
            &self.asg,
            plan.has(BootFault::AsgThrottling),
            plan.asg_errors,
        );
        fail_pager(&self.pager, plan.pager_status, plan.pager_errors);
        // The engine starts after drover, as it may at boot.
        let docker_back = Instant::now() + plan.docker_away;
        if plan.docker_away.is_zero() {
            self.docker.up().map_err(|e| format!("docker proxy: {e}"))?;
        }
        self.spawn(campaign)?;
        let start = Instant::now();
        let trigger_at = start + plan.trigger_after;
        if !plan.docker_away.is_zero() {
            tokio::time::sleep_until(docker_back.min(trigger_at).into()).await;
            if docker_back <= trigger_at {
                self.docker.up().map_err(|e| format!("docker proxy: {e}"))?;
            }
        }
        tokio::time::sleep_until(trigger_at.into()).await;
        // Mid-registration: open connections reset, the IMDS token expired.
        if plan.has(BootFault::RancherReset) {
            self.rancher_proxy.reset_open();
        }
        if plan.has(BootFault::ImdsTokenExpiry) {
            self.imds.expire_tokens();
        }
        self.phase = self.phase();
        self.trigger(campaign).await?;
        if docker_back > Instant::now() {
            tokio::time::sleep_until(docker_back.into()).await;
        }
        if !plan.docker_away.is_zero() {
            // Up already or now (after a kill and restart too).
            let _ = self.docker.up();
        }
        self.wait_for_the_end().await
    }

    /// Where the registration is: no host yet, the host registering, or active.
    fn phase(&self) -> &'static str {
        let hosts = self.rancher.hosts();
        let mine = hosts
            .iter()
            .filter(|h| h.labels.get("aws.instance_id") == Some(&self.instance_id));
        match mine.map(|h| h.state.as_str()).last() {
            None => "no host yet",
            Some("active") if !self.drover_completions(LAUNCHING).is_empty() => "answered",
            Some("active") => "host active",
            Some(_) => "host registering",
        }
    }

    async fn trigger(&mut self, campaign: &Campaign) -> Result<(), String> {
        match self.plan.trigger {
            BootTrigger::None | BootTrigger::WrongKey => {}
            BootTrigger::PowerOff | BootTrigger::PlainStop => {
                self.stop_sent = Some(Instant::now());
                if let Some(drover) = &self.drover {
                    let _ = drover.signal(Signal::SIGTERM);
                }
            }
            BootTrigger::ImdsTerminated | BootTrigger::Spot => {
                self.terminate().await?;
                if self.plan.trigger == BootTrigger::Spot {
                    let at = std::time::SystemTime::now() + Duration::from_secs(120);
                    self.imds.set_spot_action(Some(serde_json::json!({
                        "action": "terminate",
                        "time": humantime::format_rfc3339_seconds(at).to_string(),
                    })));
                } else {
                    self.imds.set_target_lifecycle_state(Some("Terminated"));
                }
            }
            BootTrigger::KillRestart => {
                if let Some(mut drover) = self.drover.take() {
                    drover.kill().await;
                }
                tokio::time::sleep(self.plan.restart_after).await;
                self.spawn(campaign)?;
            }
        }
        Ok(())
    }

    /// The group terminates the instance: a launch still waiting is abandoned by hand (by
    /// its token, as a person or the hook's timeout would end it) and the termination
    /// follows; one in service (drover answered already) is terminated as usual.
    async fn terminate(&mut self) -> Result<(), String> {
        let own = self.instance_id.clone();
        let until = Instant::now() + Duration::from_secs(20);
        loop {
            let state = self.asg.lifecycle_state(&own).unwrap_or_default();
            if matches!(state.as_str(), "Pending" | "Pending:Wait") {
                let token = self.asg.action_token(&own).unwrap_or_default();
                match abandon_by_token(&self.asg, &token).await {
                    Ok(true) => {
                        self.abandoned_by_hand = true;
                        return Ok(());
                    }
                    // drover answered first: the instance goes into service.
                    Ok(false) => {}
                    // An injected fault met the hand's call: again.
                    Err(_) => {}
                }
            } else if self.asg.begin_termination(&own, Duration::ZERO).is_some() {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(format!(
                    "the group could not terminate {own}: it stays {state}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for what the trigger calls for: the launching action answered, drover's exit,
    /// the termination hook answered.
    async fn wait_for_the_end(&mut self) -> Result<(), String> {
        let plan = self.plan.clone();
        let own = self.instance_id.clone();
        let from = Instant::now();
        match plan.trigger {
            BootTrigger::None | BootTrigger::KillRestart => {
                self.wait_answered(LAUNCHING, REGISTER_TIMEOUT + SLACK)
                    .await
                    .map_err(|()| {
                        format!("the launching action of {own} was not answered within register_timeout + {SLACK:?}")
                    })?;
            }
            BootTrigger::WrongKey => {
                // drover pages, abandons and exits by itself.
                self.exit_within(Instant::now(), REGISTER_TIMEOUT + SLACK)
                    .await;
            }
            BootTrigger::PowerOff | BootTrigger::PlainStop => {
                self.exit_within(self.stop_sent.unwrap_or(from), STOP_PROMPT)
                    .await;
                tokio::time::sleep(SETTLE).await;
            }
            BootTrigger::ImdsTerminated | BootTrigger::Spot => {
                self.wait_answered(TERMINATING, DRAIN + SLACK)
                    .await
                    .map_err(|()| {
                        format!("the termination hook of {own} was not answered within drain_timeout + {SLACK:?}")
                    })?;
            }
        }
        Ok(())
    }

    /// Waits until drover has answered this instance's action of `transition` (then a
    /// little more, for a wrong second answer or a page); `Err` past `limit` or when drover
    /// exited first.
    async fn wait_answered(&mut self, transition: &str, limit: Duration) -> Result<(), ()> {
        let from = Instant::now();
        while self.drover_completions(transition).is_empty() {
            if from.elapsed() > limit || self.exited_early() {
                return Err(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(SETTLE).await;
        Ok(())
    }

    /// Waits for drover to exit within `limit` of `since` (killing it past that), and
    /// keeps how it exited and when.
    async fn exit_within(&mut self, since: Instant, limit: Duration) {
        if let Some(mut drover) = self.drover.take() {
            let left = limit.saturating_sub(since.elapsed());
            self.exit = Some(match drover.wait(left).await {
                Ok(code) => Ok((code, since.elapsed())),
                Err(_) => Err(limit),
            });
        }
    }

    /// drover exited before it was asked to (its exit is kept for the checks).
    fn exited_early(&mut self) -> bool {
        let Some(drover) = self.drover.as_mut() else {
            return true;
        };
        match drover.exited() {
            Some(code) => {
                self.exit = Some(Ok((code, Duration::ZERO)));
                self.drover = None;
                true
            }
            None => false,
        }
    }

    /// Stops a drover still running the way systemd does (SIGTERM, bounded): it must exit 0;
    /// one that exited already is judged by how it did.
    async fn stop(&mut self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(drover) = &self.drover {
            let _ = drover.signal(Signal::SIGTERM);
            self.exit_within(Instant::now(), STOP_LIMIT).await;
        }
        let expected = if self.plan.trigger == BootTrigger::WrongKey {
            1
        } else {
            0
        };
        match self.exit {
            Some(Ok((Some(code), took))) => {
                if code != expected {
                    v.push(format!("drover exited with {code}, expected {expected}"));
                }
                if self.plan.trigger.stops() && took > STOP_PROMPT {
                    v.push(format!(
                        "drover took {took:?} to exit after the SIGTERM, over {STOP_PROMPT:?}"
                    ));
                }
            }
            Some(Ok((None, _))) => v.push("drover was killed by a signal".into()),
            Some(Err(limit)) => v.push(format!("drover did not exit within {limit:?}")),
            None => v.push("drover was never seen to exit".into()),
        }
        v
    }

    /// The invariants, checked once drover is gone.
    async fn check(&self, engine: &DockerEngine) -> Vec<String> {
        let mut v = Vec::new();
        let trigger = self.plan.trigger;
        let own = &self.instance_id;
        let all = self.asg.completions();
        let mine = |transition: &str| {
            all.iter()
                .filter(|c| &c.instance_id == own && c.transition == transition)
                .collect::<Vec<_>>()
        };
        let launch = mine(LAUNCHING);
        if let Some(c) = launch.iter().find(|c| c.by_timeout) {
            v.push(format!(
                "the launching action timed out ({}) instead of being answered",
                c.result
            ));
        }
        let launch: Vec<&str> = self
            .drover_completions(LAUNCHING)
            .iter()
            .map(|r| {
                if r == "CONTINUE" {
                    "CONTINUE"
                } else {
                    "ABANDON"
                }
            })
            .collect();
        let hosts: Vec<_> = self
            .rancher
            .hosts()
            .into_iter()
            .filter(|h| h.labels.get("aws.instance_id") == Some(own))
            .collect();
        let ever_active = hosts
            .iter()
            .any(|h| h.history.iter().any(|s| s == "active"));
        let left: Vec<_> = hosts.iter().filter(|h| !taken_out(&h.state)).collect();
        let pages = self.pager.events();
        let triggers = |key: &str| {
            pages
                .iter()
                .filter(|e| e["event_action"] == "trigger" && e["dedup_key"] == key)
                .count()
        };
        let boot_pages = triggers(&format!("drover-boot-{own}"));
        let take_out_pages = triggers(&format!("drover-{own}"));

        // The launching action: once at most, CONTINUE exactly when the host is active,
        // ABANDON exactly when the registration failed.
        if launch.len() > 1 {
            v.push(format!(
                "the launching action was answered {} times: {launch:?}",
                launch.len()
            ));
        }
        let failed = launch.contains(&"ABANDON");
        if launch.contains(&"CONTINUE") && !ever_active {
            v.push("CONTINUE, but the instance's host was never active".into());
        }
        if trigger.must_register() {
            if launch != ["CONTINUE"] {
                v.push(format!(
                    "the registration should have ended with CONTINUE, the launching action got {launch:?}"
                ));
            }
            if !left.iter().any(|h| h.state == "active") {
                v.push(format!(
                    "no active host of {own}: {:?}",
                    hosts.iter().map(|h| &h.history).collect::<Vec<_>>()
                ));
            }
        } else if trigger == BootTrigger::WrongKey {
            if launch != ["ABANDON"] {
                v.push(format!(
                    "a refused key should end with ABANDON, the launching action got {launch:?}"
                ));
            }
            if ever_active {
                v.push("a host became active with a refused key".into());
            }
        } else if failed {
            v.push(format!(
                "ABANDON by drover, though the registration was cut short by {trigger:?}"
            ));
        }
        // A boot page exactly when the registration failed.
        if failed && boot_pages != 1 {
            v.push(format!(
                "the registration failed and {boot_pages} boot pages were sent, not 1"
            ));
        }
        if !failed && boot_pages > 0 {
            v.push(format!(
                "{boot_pages} boot pages, though the registration did not fail"
            ));
        }
        // A take-out page only for a take-out that failed.
        if trigger.takes_out() {
            if !left.is_empty() {
                v.push(format!(
                    "after {trigger:?}, hosts of {own} left in Rancher: {:?}",
                    left.iter()
                        .map(|h| format!("{} {}", h.id, h.state))
                        .collect::<Vec<_>>()
                ));
            }
            if left.is_empty() && take_out_pages > 0 {
                v.push(format!(
                    "{take_out_pages} take-out pages for a take-out that worked"
                ));
            }
            let running = self.running_containers(engine).await;
            if !running.is_empty() {
                v.push(format!(
                    "after {trigger:?}, containers of this case still running: {running:?}"
                ));
            }
        } else if take_out_pages > 0 {
            v.push(format!(
                "{take_out_pages} take-out pages though nothing was taken out"
            ));
        }
        if trigger == BootTrigger::PlainStop {
            let take_outs = self
                .rancher
                .requests()
                .into_iter()
                .filter(|r| r.method == "POST" && r.query.contains("action="))
                .map(|r| r.query)
                .collect::<Vec<_>>();
            if !take_outs.is_empty() || hosts.iter().any(|h| taken_out(&h.state)) {
                v.push(format!(
                    "a plain stop changed Rancher: actions {take_outs:?}, hosts {:?}",
                    hosts.iter().map(|h| &h.history).collect::<Vec<_>>()
                ));
            }
        }
        // The termination hook: once, CONTINUE (the host is out), for a termination only.
        let terminating = self.drover_completions(TERMINATING);
        if trigger.terminates() {
            if terminating != ["CONTINUE"] {
                v.push(format!(
                    "the termination hook should be answered CONTINUE once, got {terminating:?}"
                ));
            }
        } else if !terminating.is_empty() {
            v.push(format!(
                "the termination hook was answered ({terminating:?}) though the group did not terminate {own} while drover ran"
            ));
        }
        // No refused CompleteLifecycleAction: drover answers only what waits. A hand's
        // refused ABANDON (by token) is the hand's; a late CONTINUE after the hand's
        // ABANDON is "already done".
        for r in self.asg.refused_completions() {
            if r.message.contains("token") {
                continue;
            }
            if self.abandoned_by_hand && r.state.starts_with("Terminat") {
                continue;
            }
            v.push(format!(
                "CompleteLifecycleAction refused while {}: {}",
                r.state, r.message
            ));
        }
        v
    }

    /// The `rancher-agent` and bootstrap containers of this case still running: those
    /// labelled or configured with this instance's id, and the bootstraps the stand-in saw.
    async fn running_containers(&self, engine: &DockerEngine) -> Vec<String> {
        let own = &self.instance_id;
        let seen: Vec<String> = self
            .rancher
            .bootstraps_seen()
            .into_iter()
            .map(|b| b.container_id)
            .collect();
        engine
            .containers()
            .await
            .into_iter()
            .filter(|c| c.running)
            .filter(|c| {
                seen.contains(&c.id)
                    || c.labels.get("io.drover.bootstrap") == Some(own)
                    || c.env.iter().any(|e| {
                        e.starts_with("CATTLE_HOST_LABELS=")
                            && e.contains(&format!("aws.instance_id={own}"))
                    })
            })
            .map(|c| format!("{} ({})", c.name, &c.id[..c.id.len().min(12)]))
            .collect()
    }

    /// No secret in any output: the keys, and the registration tokens drover was given.
    fn check_output(&self) -> Vec<String> {
        let tokens: Vec<String> = self
            .rancher
            .bootstraps_seen()
            .into_iter()
            .filter_map(|b| b.args.first().cloned())
            .filter_map(|url| url.rsplit("/scripts/").next().map(str::to_string))
            .filter(|t| t.len() >= 8)
            .collect();
        let mut secrets = vec![SECRET, ROUTING_KEY, WRONG_SECRET];
        secrets.extend(tokens.iter().map(String::as_str));
        output_violations(&read_logs(&self.logs), &secrets)
    }
}

/// `CompleteLifecycleAction` with `ABANDON` by the action's token, as someone other than
/// drover would: `Ok(false)` when no action waits (already answered), `Err` on any other
/// failure (an injected fault).
async fn abandon_by_token(asg: &AutoScalingServer, token: &str) -> Result<bool, String> {
    let form = [
        ("Action", "CompleteLifecycleAction"),
        ("Version", "2011-01-01"),
        ("AutoScalingGroupName", GROUP),
        ("LifecycleHookName", LAUNCH_HOOK),
        ("LifecycleActionResult", "ABANDON"),
        ("LifecycleActionToken", token),
    ];
    let reply = reqwest::Client::new()
        .post(asg.url())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string(form).map_err(|e| e.to_string())?)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = reply.status().as_u16();
    let body = reply.text().await.unwrap_or_default();
    match status {
        200 => Ok(true),
        400 if body.contains("ValidationError") => Ok(false),
        _ => Err(format!("{status}: {body}")),
    }
}

/// Boot cases by trigger.
pub fn cases_by_trigger(reports: &[BootReport]) -> BTreeMap<BootTrigger, usize> {
    let mut by = BTreeMap::new();
    for r in reports {
        *by.entry(r.plan.trigger).or_insert(0) += 1;
    }
    by
}

/// Faults injected, by kind, over `reports`.
pub fn faults_by_kind(reports: &[BootReport]) -> BTreeMap<BootFault, usize> {
    let mut by = BTreeMap::new();
    for r in reports {
        for f in &r.plan.faults {
            *by.entry(*f).or_insert(0) += 1;
        }
    }
    by
}

/// The boot campaign's summary as Markdown: cases, triggers, faults by kind, violations.
pub fn markdown(reports: &[BootReport], seeds: &str) -> String {
    let triggers = cases_by_trigger(reports)
        .into_iter()
        .map(|(t, n)| (format!("{t:?}"), n));
    let faults = faults_by_kind(reports)
        .into_iter()
        .map(|(f, n)| (f.describe(), n));
    let mut out = summary(reports, seeds, triggers, faults);
    let mut phases: BTreeMap<&str, usize> = BTreeMap::new();
    for r in reports {
        *phases.entry(r.phase).or_insert(0) += 1;
    }
    out.push_str("\n| registration when the trigger came | cases |\n|---|---:|\n");
    for (phase, n) in phases {
        out.push_str(&format!("| {phase} | {n} |\n"));
    }
    out
}
