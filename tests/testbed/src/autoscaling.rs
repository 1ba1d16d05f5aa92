//! An Auto Scaling stand-in speaking awsQuery: lifecycle hooks on instance launch and
//! termination, and warm pools.
//!
//! An instance is always in one *move*: into service (`Pending`, launched or leaving the
//! warm pool), into the warm pool (`Warmed:Pending`, launched into it or returned to it on
//! scale-in), out of the group (`Terminating`) or out of the pool (`Warmed:Terminating`).
//! Each move has the same four stages: a lag, the hook's wait (`…:Wait`, only when the group
//! has a hook for it), a short `…:Proceed`, and where it ends (`InService`, the pool state,
//! `Terminated`, `Warmed:Terminated`). An `ABANDON`ed launch becomes a termination, which
//! runs the termination hook like any other.
//!
//! Lifecycle states are computed lazily from `Instant`s on every request and every handle
//! call, so transitions happen on their own, after real time has passed, and deterministically.
//!
//! An instance whose termination is over is absent from every answer, as in the service
//! ([`AutoScalingServer::vanish`] ends one at once, as for an instance terminated through
//! EC2 itself). The Describe calls page as the service does: at most 50 records a page
//! (`MaxRecords`, 50 by default), the rest behind a `NextToken`; at most 50 `InstanceIds`
//! a `DescribeAutoScalingInstances` call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use rand::Rng;

use crate::http;

const NS: &str = "http://autoscaling.amazonaws.com/doc/2011-01-01/";
/// The transition of a hook that pauses instances going into service or into the pool.
pub const LAUNCHING: &str = "autoscaling:EC2_INSTANCE_LAUNCHING";
/// The transition of a hook that pauses instances leaving (and returning to the pool).
pub const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";
/// How long an instance shows a `…:Proceed` state before the state its move ends in.
const PROCEED_FOR: Duration = Duration::from_secs(1);
/// How long an instance whose launch was abandoned shows `Terminating` (or
/// `Warmed:Terminating`) before its termination hook's wait: a short moment, as the
/// `…:Proceed` states, so that a client can see it before the wait begins.
const ABANDON_LAG: Duration = PROCEED_FOR;
/// Where a warmed instance rests unless told otherwise: the service's default pool state.
const DEFAULT_POOL_STATE: &str = "Warmed:Stopped";
/// The cap on the whole wait, heartbeats or not: 48 hours...
const MAX_GLOBAL_TIMEOUT: Duration = Duration::from_secs(48 * 3600);
/// ...or 100 heartbeat timeouts, whichever is smaller.
const GLOBAL_FACTOR: u32 = 100;

/// A lifecycle hook of a group. Timeouts under the real minimum of 30 s are allowed, so
/// that tests can watch a timeout happen.
#[derive(Debug, Clone)]
pub struct HookSpec {
    pub name: String,
    /// [`LAUNCHING`] or [`TERMINATING`].
    pub transition: String,
    pub heartbeat_timeout: Duration,
    /// `ABANDON` or `CONTINUE`.
    pub default_result: String,
}

/// A lifecycle action that ended, by a `CompleteLifecycleAction` call or by timing out.
#[derive(Debug, Clone)]
pub struct Completion {
    pub group: String,
    pub hook: String,
    /// The hook's transition, so that a launch's completion is told from a termination's.
    pub transition: String,
    pub instance_id: String,
    pub result: String,
    /// Completed by `LifecycleActionToken` (else by `InstanceId`, or by timeout).
    pub by_token: bool,
    /// The hook timed out and its `DefaultResult` was applied.
    pub by_timeout: bool,
    /// Since the stand-in started.
    pub at: Duration,
}

/// An accepted `RecordLifecycleActionHeartbeat`.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub group: String,
    pub hook: String,
    /// The hook's transition, as in [`Completion`].
    pub transition: String,
    pub instance_id: String,
    /// Since the stand-in started.
    pub at: Duration,
}

/// A `CompleteLifecycleAction` the service refused, with the named instance's lifecycle
/// state at that moment: a call before `Terminating:Wait` is a client's mistake.
#[derive(Debug, Clone)]
pub struct RefusedCompletion {
    /// From `InstanceId`, else from the token; empty when neither names an instance.
    pub instance_id: String,
    pub state: String,
    pub message: String,
}

/// A hook's action, as captured when its move began: changing the group's hooks later
/// does not change an action under way, as in the service.
#[derive(Debug, Clone)]
struct Action {
    hook: String,
    transition: String,
    heartbeat_timeout: Duration,
    default_result: String,
    token: String,
    last_heartbeat: Option<Instant>,
    /// When the action ended (completed or timed out).
    done: Option<Instant>,
}

impl Action {
    /// When the action times out unless completed or heartbeated before: a heartbeat
    /// restarts the heartbeat timeout, but never past the global cap.
    fn deadline(&self, wait_start: Instant) -> Instant {
        let global = (self.heartbeat_timeout * GLOBAL_FACTOR).min(MAX_GLOBAL_TIMEOUT);
        let beat = self.last_heartbeat.unwrap_or(wait_start) + self.heartbeat_timeout;
        beat.min(wait_start + global)
    }
}

/// Where an instance is going. The service names the same four stages differently for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Move {
    /// Into service: launched into the group, or leaving the warm pool.
    Launch,
    /// Into the warm pool: launched into it, or returned to it on scale-in.
    Warm,
    /// Out of the group.
    Terminate,
    /// Out of the warm pool.
    TerminateWarmed,
}

impl Move {
    /// The states before, during and after the hook's wait.
    fn stages(self) -> [&'static str; 3] {
        match self {
            Move::Launch => ["Pending", "Pending:Wait", "Pending:Proceed"],
            Move::Warm => [
                "Warmed:Pending",
                "Warmed:Pending:Wait",
                "Warmed:Pending:Proceed",
            ],
            Move::Terminate => ["Terminating", "Terminating:Wait", "Terminating:Proceed"],
            Move::TerminateWarmed => [
                "Warmed:Terminating",
                "Warmed:Terminating:Wait",
                "Warmed:Terminating:Proceed",
            ],
        }
    }
}

/// The move an instance is making, or made last.
#[derive(Debug, Clone)]
struct Step {
    kind: Move,
    began: Instant,
    lag: Duration,
    /// `None`: the group has no hook for this move, so it goes straight on.
    action: Option<Action>,
}

impl Step {
    /// When the instance reaches the wait (or `…:Proceed` without a hook).
    fn wait_start(&self) -> Instant {
        self.began + self.lag
    }

    /// The open action, once its wait has begun.
    fn waiting(&self, now: Instant) -> Option<&Action> {
        self.action
            .as_ref()
            .filter(|a| a.done.is_none() && now >= self.wait_start())
    }

    /// When the open action times out, if it has not been completed.
    fn due(&self) -> Option<Instant> {
        self.action
            .as_ref()
            .filter(|a| a.done.is_none())
            .map(|a| a.deadline(self.wait_start()))
    }
}

#[derive(Debug, Clone)]
struct Instance {
    group: String,
    instance_type: String,
    az: String,
    /// Where the instance rests in the warm pool (`Warmed:Stopped`, ...), once it has been
    /// given one: a returned instance goes back to the state it had.
    pool_state: Option<String>,
    /// `None`: in service since it was added.
    step: Option<Step>,
}

impl Instance {
    fn state(&self, now: Instant) -> &str {
        let Some(step) = &self.step else {
            return "InService";
        };
        let [before, wait, proceed] = step.kind.stages();
        if now < step.wait_start() {
            return before;
        }
        let proceed_from = match &step.action {
            None => step.wait_start(),
            Some(Action { done: None, .. }) => return wait,
            Some(Action { done: Some(at), .. }) => *at,
        };
        if now < proceed_from + PROCEED_FOR {
            return proceed;
        }
        match step.kind {
            Move::Launch => "InService",
            Move::Warm => self.pool_state.as_deref().unwrap_or(DEFAULT_POOL_STATE),
            Move::Terminate => "Terminated",
            Move::TerminateWarmed => "Warmed:Terminated",
        }
    }

    /// Resting in the warm pool, its move into it over.
    fn warmed(&self, now: Instant) -> bool {
        self.step.as_ref().is_some_and(|s| s.kind == Move::Warm)
            && self.state(now) == self.pool_state.as_deref().unwrap_or(DEFAULT_POOL_STATE)
    }

    /// The action of the current move, open or ended.
    fn action(&self) -> Option<&Action> {
        self.step.as_ref().and_then(|s| s.action.as_ref())
    }
}

/// The most records a Describe call answers with, and its default `MaxRecords`.
const MAX_RECORDS: usize = 50;

/// A `Terminated` or `Warmed:Terminated` instance has left its group: it is simply absent,
/// like any other instance outside every group.
fn gone(state: &str) -> bool {
    state == "Terminated" || state == "Warmed:Terminated"
}

/// A group's warm pool, as `DescribeWarmPool` shows it.
#[derive(Debug, Clone)]
struct WarmPool {
    /// `Stopped`, `Running` or `Hibernated`: the pool state without its `Warmed:`.
    pool_state: String,
    /// Set once an instance has been returned to the pool on scale-in.
    reuse_on_scale_in: bool,
}

struct Inner {
    started: Instant,
    /// Group name -> hooks, in the order added.
    groups: HashMap<String, Vec<HookSpec>>,
    /// Group name -> its warm pool, for the groups that have one.
    warm_pools: HashMap<String, WarmPool>,
    /// Instance id -> instance, plus the ids in the order added for stable listings.
    instances: HashMap<String, Instance>,
    order: Vec<String>,
    completions: Vec<Completion>,
    refused: Vec<RefusedCompletion>,
    heartbeats: Vec<Heartbeat>,
}

impl Inner {
    /// Applies the timeouts that have fallen due by `now`, in deadline order. One at a
    /// time: a launch abandoned by its timeout starts a termination whose own hook may time
    /// out before `now` too.
    fn advance(&mut self, now: Instant) {
        loop {
            let first = self
                .order
                .iter()
                .filter_map(|id| {
                    let due = self.instances.get(id)?.step.as_ref()?.due()?;
                    (due <= now).then_some((due, id))
                })
                .min_by_key(|(due, _)| *due)
                .map(|(due, id)| (due, id.clone()));
            let Some((due, id)) = first else {
                break;
            };
            self.end_action(&id, due, None, false);
        }
    }

    /// Ends the open action of `id` at `at` with `result`, or with the hook's default when
    /// it timed out (`None`), records the completion, and turns an abandoned launch into a
    /// termination.
    fn end_action(&mut self, id: &str, at: Instant, result: Option<String>, by_token: bool) {
        let started = self.started;
        let Some(inst) = self.instances.get_mut(id) else {
            return;
        };
        let Some(step) = &mut inst.step else {
            return;
        };
        let kind = step.kind;
        let Some(action) = &mut step.action else {
            return;
        };
        action.done = Some(at);
        let by_timeout = result.is_none();
        let result = result.unwrap_or_else(|| action.default_result.clone());
        let abandoned_launch = action.transition == LAUNCHING && result == "ABANDON";
        self.completions.push(Completion {
            group: inst.group.clone(),
            hook: action.hook.clone(),
            transition: action.transition.clone(),
            instance_id: id.to_string(),
            result,
            by_token,
            by_timeout,
            at: at.saturating_duration_since(started),
        });
        if !abandoned_launch {
            return;
        }
        let kind = match kind {
            Move::Warm => Move::TerminateWarmed,
            _ => Move::Terminate,
        };
        let group = inst.group.clone();
        let step = self.step(&group, kind, at, ABANDON_LAG);
        if let Some(inst) = self.instances.get_mut(id) {
            inst.step = Some(step);
        }
    }

    /// A move of an instance of `group` beginning at `began`, with an action when the group
    /// has a hook for it. Going into the pool on scale-in pauses for the termination hook,
    /// not the launching one: the instance is leaving service.
    fn step(&self, group: &str, kind: Move, began: Instant, lag: Duration) -> Step {
        let transition = match kind {
            Move::Launch => LAUNCHING,
            Move::Warm | Move::Terminate | Move::TerminateWarmed => TERMINATING,
        };
        self.step_for(group, kind, transition, began, lag)
    }

    fn step_for(
        &self,
        group: &str,
        kind: Move,
        transition: &str,
        began: Instant,
        lag: Duration,
    ) -> Step {
        let action = self
            .groups
            .get(group)
            .and_then(|hooks| hooks.iter().find(|h| h.transition == transition))
            .map(|h| Action {
                hook: h.name.clone(),
                transition: h.transition.clone(),
                heartbeat_timeout: h.heartbeat_timeout,
                default_result: h.default_result.clone(),
                token: uuid(),
                last_heartbeat: None,
                done: None,
            });
        Step {
            kind,
            began,
            lag,
            action,
        }
    }

    /// Adds (or replaces) an instance.
    fn insert(&mut self, instance_id: &str, instance: Instance) {
        if !self.instances.contains_key(instance_id) {
            self.order.push(instance_id.to_string());
        }
        self.instances.insert(instance_id.to_string(), instance);
    }

    /// The instance whose current move's action carries `token`.
    fn by_token(&self, token: &str) -> Option<&String> {
        self.order.iter().find(|id| {
            self.instances
                .get(*id)
                .and_then(Instance::action)
                .is_some_and(|a| a.token == token)
        })
    }

    /// The warm pool of `group`, made with `pool_state` when it has none yet.
    fn warm_pool(&mut self, group: &str, pool_state: &str) -> &mut WarmPool {
        self.warm_pools
            .entry(group.to_string())
            .or_insert_with(|| WarmPool {
                pool_state: pool_state
                    .strip_prefix("Warmed:")
                    .unwrap_or(pool_state)
                    .to_string(),
                reuse_on_scale_in: false,
            })
    }

    fn since_start(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }
}

struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state, with every timeout due by now applied.
    fn now(&self) -> (MutexGuard<'_, Inner>, Instant) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.advance(now);
        (inner, now)
    }
}

/// A running Auto Scaling stand-in; stops when dropped.
pub struct AutoScalingServer {
    shared: Arc<Shared>,
    faults: http::Faults,
    server: http::Server,
}

impl AutoScalingServer {
    pub async fn start() -> AutoScalingServer {
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                started: Instant::now(),
                groups: HashMap::new(),
                warm_pools: HashMap::new(),
                instances: HashMap::new(),
                order: Vec::new(),
                completions: Vec::new(),
                refused: Vec::new(),
                heartbeats: Vec::new(),
            }),
        });
        let faults = http::Faults::default();
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let server = http::Server::start(faults.serve(router, render))
            .await
            .expect("bind a loopback port for the Auto Scaling stand-in");
        AutoScalingServer {
            shared,
            faults,
            server,
        }
    }

    /// The instant the stand-in started: what every recorded `at` counts from.
    pub fn started_at(&self) -> Instant {
        self.shared.lock().started
    }

    /// What `AWS_ENDPOINT_URL_AUTO_SCALING` is set to.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Adds a group (or replaces its hooks). Actions under way keep the hook they began with.
    pub fn add_group(&self, name: &str, hooks: Vec<HookSpec>) {
        self.shared.lock().groups.insert(name.to_string(), hooks);
    }

    /// The hooks of `group`, in the order added; `None` for a group never added.
    pub fn hooks(&self, group: &str) -> Option<Vec<HookSpec>> {
        self.shared.lock().groups.get(group).cloned()
    }

    /// Adds an instance `InService` in `group`.
    pub fn add_instance(&self, group: &str, instance_id: &str, instance_type: &str, az: &str) {
        self.shared.lock().insert(
            instance_id,
            Instance {
                group: group.to_string(),
                instance_type: instance_type.to_string(),
                az: az.to_string(),
                pool_state: None,
                step: None,
            },
        );
    }

    /// The group launches an instance straight into service (or replaces one of that id):
    /// `Pending` for `lag`, then `Pending:Wait` when the group has a launching hook, until
    /// the action is completed or times out; `CONTINUE` goes on through `Pending:Proceed`
    /// to `InService`, `ABANDON` terminates the instance (`Terminating`, the termination
    /// hook's `Terminating:Wait`, ... `Terminated`). Returns the launching action's token;
    /// `None` without a launching hook (then `Pending:Proceed` and `InService` follow the lag).
    pub fn launch_instance(
        &self,
        group: &str,
        instance_id: &str,
        instance_type: &str,
        az: &str,
        lag: Duration,
    ) -> Option<String> {
        self.put(group, instance_id, instance_type, az, lag, None)
    }

    /// The group launches an instance into its warm pool (or replaces one of that id):
    /// `Warmed:Pending` for `lag`, then `Warmed:Pending:Wait` when the group has a launching
    /// hook; `CONTINUE` goes on through `Warmed:Pending:Proceed` to `pool_state`
    /// (`Warmed:Stopped`, `Warmed:Running` or `Warmed:Hibernated`), `ABANDON` terminates it
    /// from the pool (`Warmed:Terminating`, ... `Warmed:Terminated`). The group's warm pool
    /// is made with that pool state if it has none. Returns the launching action's token;
    /// `None` without a launching hook.
    pub fn warm_instance(
        &self,
        group: &str,
        instance_id: &str,
        instance_type: &str,
        az: &str,
        lag: Duration,
        pool_state: &str,
    ) -> Option<String> {
        assert!(
            matches!(
                pool_state,
                "Warmed:Stopped" | "Warmed:Running" | "Warmed:Hibernated"
            ),
            "a warm pool's instances rest Warmed:Stopped, Warmed:Running or Warmed:Hibernated, not {pool_state}"
        );
        self.put(group, instance_id, instance_type, az, lag, Some(pool_state))
    }

    /// A launch into service (`pool_state` `None`) or into the pool; the launching hook
    /// pauses both.
    fn put(
        &self,
        group: &str,
        instance_id: &str,
        instance_type: &str,
        az: &str,
        lag: Duration,
        pool_state: Option<&str>,
    ) -> Option<String> {
        let (mut inner, now) = self.shared.now();
        let kind = match pool_state {
            Some(state) => {
                inner.warm_pool(group, state);
                Move::Warm
            }
            None => Move::Launch,
        };
        let step = inner.step_for(group, kind, LAUNCHING, now, lag);
        let token = step.action.as_ref().map(|a| a.token.clone());
        inner.insert(
            instance_id,
            Instance {
                group: group.to_string(),
                instance_type: instance_type.to_string(),
                az: az.to_string(),
                pool_state: pool_state.map(str::to_string),
                step: Some(step),
            },
        );
        token
    }

    /// A warmed instance goes into service (scale-out from the pool): `Pending` for `lag`,
    /// then `Pending:Wait` when the group has a launching hook, and on as in
    /// [`launch_instance`](Self::launch_instance). `false`, changing nothing, unless the
    /// instance rests in the pool (its move into it over).
    pub fn leave_warm_pool(&self, instance_id: &str, lag: Duration) -> bool {
        self.begin(instance_id, lag, Move::Launch, |inst, now| inst.warmed(now))
    }

    /// Scale-in with instance reuse: an `InService` instance goes back to the pool:
    /// `Warmed:Pending` for `lag`, then `Warmed:Pending:Wait` when the group has a
    /// termination hook (the service pauses a returning instance for the termination hook,
    /// not the launching one), then `Warmed:Pending:Proceed` and the pool state it had
    /// (the group's, else `Warmed:Stopped`), whatever the result: an instance leaving
    /// service goes on either way. The group's warm pool then shows the reuse policy.
    /// `false`, changing nothing, unless the instance is `InService`.
    pub fn return_to_warm_pool(&self, instance_id: &str, lag: Duration) -> bool {
        let (mut inner, now) = self.shared.now();
        let Some(inst) = inner.instances.get(instance_id) else {
            return false;
        };
        if inst.state(now) != "InService" {
            return false;
        }
        let group = inst.group.clone();
        let had = inst.pool_state.clone();
        let step = inner.step(&group, Move::Warm, now, lag);
        let pool = inner.warm_pool(&group, had.as_deref().unwrap_or(DEFAULT_POOL_STATE));
        pool.reuse_on_scale_in = true;
        let pool_state = had.unwrap_or_else(|| format!("Warmed:{}", pool.pool_state));
        if let Some(inst) = inner.instances.get_mut(instance_id) {
            inst.pool_state = Some(pool_state);
            inst.step = Some(step);
        }
        true
    }

    /// The group terminates a warmed instance from the pool: `Warmed:Terminating` for
    /// `lag`, then `Warmed:Terminating:Wait` when the group has a termination hook
    /// (completed, heartbeated and timed out like any other action), then
    /// `Warmed:Terminating:Proceed` and `Warmed:Terminated`, when it is absent everywhere.
    /// `false`, changing nothing, unless the instance rests in the pool.
    pub fn terminate_warmed(&self, instance_id: &str, lag: Duration) -> bool {
        self.begin(instance_id, lag, Move::TerminateWarmed, |inst, now| {
            inst.warmed(now)
        })
    }

    /// Starts move `kind` of the instance now when `allowed` says it may.
    fn begin(
        &self,
        instance_id: &str,
        lag: Duration,
        kind: Move,
        allowed: impl Fn(&Instance, Instant) -> bool,
    ) -> bool {
        let (mut inner, now) = self.shared.now();
        let Some(inst) = inner.instances.get(instance_id) else {
            return false;
        };
        if !allowed(inst, now) {
            return false;
        }
        let step = inner.step(&inst.group.clone(), kind, now, lag);
        if let Some(inst) = inner.instances.get_mut(instance_id) {
            inst.step = Some(step);
        }
        true
    }

    /// The group decides to terminate the instance: `Terminating` now, `Terminating:Wait`
    /// after `lag`. Returns the token the lifecycle action will carry; `None` when the group
    /// has no terminating hook (the instance then goes straight on to `Terminating:Proceed`),
    /// the instance is unknown, or it is not in service (launching, or in the warm pool: see
    /// [`terminate_warmed`](Self::terminate_warmed)), which changes nothing. Calling it again
    /// changes nothing and gives the same token.
    pub fn begin_termination(&self, instance_id: &str, lag: Duration) -> Option<String> {
        let (mut inner, now) = self.shared.now();
        let inst = inner.instances.get(instance_id)?;
        if let Some(step) = inst.step.as_ref().filter(|s| s.kind == Move::Terminate) {
            return step.action.as_ref().map(|a| a.token.clone());
        }
        if inst.state(now) != "InService" {
            return None;
        }
        let step = inner.step(&inst.group.clone(), Move::Terminate, now, lag);
        let token = step.action.as_ref().map(|a| a.token.clone());
        if let Some(inst) = inner.instances.get_mut(instance_id) {
            inst.step = Some(step);
        }
        token
    }

    /// The instance's termination is over at once, as for one terminated through EC2
    /// itself (a hardware failure, a kernel panic): the group no longer knows it, and
    /// `DescribeAutoScalingInstances` returns nothing for it. Completions it had stay
    /// recorded. `false` for an instance never added.
    pub fn vanish(&self, instance_id: &str) -> bool {
        let (mut inner, _) = self.shared.now();
        inner.order.retain(|id| id != instance_id);
        inner.instances.remove(instance_id).is_some()
    }

    /// The token of the instance's current lifecycle action (open or ended), for a test
    /// that completes by token an action it did not start itself.
    pub fn action_token(&self, instance_id: &str) -> Option<String> {
        let (inner, _) = self.shared.now();
        inner
            .instances
            .get(instance_id)?
            .action()
            .map(|a| a.token.clone())
    }

    /// `Pending`, `Pending:Wait`, `Pending:Proceed`, `InService`, `Terminating`,
    /// `Terminating:Wait`, `Terminating:Proceed`, `Terminated`, and the warm pool's
    /// `Warmed:Pending`, `Warmed:Pending:Wait`, `Warmed:Pending:Proceed`, `Warmed:Stopped`,
    /// `Warmed:Running`, `Warmed:Hibernated`, `Warmed:Terminating`, `Warmed:Terminating:Wait`,
    /// `Warmed:Terminating:Proceed`, `Warmed:Terminated`; `None` for an instance never added.
    pub fn lifecycle_state(&self, instance_id: &str) -> Option<String> {
        let (inner, now) = self.shared.now();
        inner
            .instances
            .get(instance_id)
            .map(|i| i.state(now).to_string())
    }

    /// Completions by call and by timeout, in the order they happened.
    pub fn completions(&self) -> Vec<Completion> {
        self.shared.now().0.completions.clone()
    }

    /// `CompleteLifecycleAction` calls refused (injected faults are not counted).
    pub fn refused_completions(&self) -> Vec<RefusedCompletion> {
        self.shared.now().0.refused.clone()
    }

    pub fn heartbeats(&self) -> Vec<Heartbeat> {
        self.shared.now().0.heartbeats.clone()
    }

    /// Injected faults, latency and the request log, each request with its `Action` (see
    /// [`http::fault_api!`]): an injected fault fails the call without effect, with the
    /// service's awsQuery error.
    pub fn faults(&self) -> &http::Faults {
        &self.faults
    }
}

http::fault_api!(AutoScalingServer);

/// The request's parameters, query string and form body together.
struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Non-empty value of `key`.
    fn value(&self, key: &str) -> Option<&str> {
        self.get(key).filter(|v| !v.is_empty())
    }

    /// `Prefix.member.1`, `Prefix.member.2`, ... in index order.
    fn members(&self, prefix: &str) -> Vec<String> {
        let head = format!("{prefix}.member.");
        let mut found: Vec<(u32, String)> = self
            .0
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(&head)?.parse().ok()?, v.clone())))
            .collect();
        found.sort_by_key(|(i, _)| *i);
        found.into_iter().map(|(_, v)| v).collect()
    }
}

/// An awsQuery error answer.
struct ApiError {
    status: u16,
    kind: &'static str,
    code: String,
    message: String,
}

impl ApiError {
    fn validation(message: impl Into<String>) -> ApiError {
        ApiError {
            status: 400,
            kind: "Sender",
            code: "ValidationError".into(),
            message: message.into(),
        }
    }

    /// The service's answer to a required parameter left out.
    fn missing(param: &str) -> ApiError {
        let mut chars = param.chars();
        let camel = match chars.next() {
            Some(c) => c.to_lowercase().chain(chars).collect::<String>(),
            None => String::new(),
        };
        ApiError::validation(format!(
            "1 validation error detected: Value null at '{camel}' failed to satisfy constraint: Member must not be null"
        ))
    }

    /// An injected fault, as the service answers it.
    fn fault(fault: http::Fault, params: &Params) -> ApiError {
        match fault {
            http::Fault::Throttling => ApiError {
                status: 400,
                kind: "Sender",
                code: "Throttling".into(),
                message: "Rate exceeded".into(),
            },
            http::Fault::Status(503) => ApiError {
                status: 503,
                kind: "Receiver",
                code: "ServiceUnavailable".into(),
                message: "Service is unavailable. Please try again later.".into(),
            },
            http::Fault::Status(500) => ApiError {
                status: 500,
                kind: "Receiver",
                code: "InternalFailure".into(),
                message: "The request processing has failed because of an unknown error, exception or failure.".into(),
            },
            http::Fault::Status(status) => {
                let reason = StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("Error");
                ApiError {
                    status,
                    kind: if status < 500 { "Sender" } else { "Receiver" },
                    code: reason.split_whitespace().collect(),
                    message: reason.into(),
                }
            }
            http::Fault::ValidationError => ApiError::validation(no_active_action(
                params.value("LifecycleActionToken"),
                params.value("InstanceId").unwrap_or(""),
            )),
        }
    }

    fn into_response(self, request_id: &str) -> Response {
        let body = format!(
            "<ErrorResponse xmlns=\"{NS}\">\n  <Error>\n    <Type>{}</Type>\n    <Code>{}</Code>\n    <Message>{}</Message>\n  </Error>\n  <RequestId>{request_id}</RequestId>\n</ErrorResponse>\n",
            self.kind,
            self.code,
            esc(&self.message)
        );
        xml(self.status, request_id, body)
    }
}

fn no_active_action(token: Option<&str>, instance_id: &str) -> String {
    match token {
        Some(token) => format!("No active Lifecycle Action found with token {token}"),
        None => format!("No active Lifecycle Action found with instance ID {instance_id}"),
    }
}

/// The request's parameters: the query string, then the form body.
fn params(query: &str, body: &[u8]) -> Result<Params, serde_urlencoded::de::Error> {
    let mut pairs = serde_urlencoded::from_str::<Vec<(String, String)>>(query)?;
    pairs.extend(serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)?);
    Ok(Params(pairs))
}

async fn handle(State(shared): State<Arc<Shared>>, uri: Uri, body: Bytes) -> Response {
    let request_id = uuid();
    let result = match params(uri.query().unwrap_or(""), &body) {
        Err(e) => Err(ApiError {
            status: 400,
            kind: "Sender",
            code: "MalformedQueryString".into(),
            message: format!("The query string is malformed: {e}"),
        }),
        Ok(params) => {
            let action = params.get("Action").unwrap_or("").to_string();
            dispatch(&shared, &action, &params, &request_id)
        }
    };
    match result {
        Ok(body) => xml(200, &request_id, body),
        Err(e) => e.into_response(&request_id),
    }
}

/// An injected fault, as the service answers it (awsQuery XML).
fn render(fault: http::Fault, req: &http::Incoming<'_>) -> Response {
    let params = params(req.query, req.body).unwrap_or(Params(Vec::new()));
    ApiError::fault(fault, &params).into_response(&uuid())
}

fn dispatch(
    shared: &Shared,
    action: &str,
    params: &Params,
    request_id: &str,
) -> Result<String, ApiError> {
    let (mut inner, now) = shared.now();
    let result = match action {
        "CompleteLifecycleAction" => match complete(&mut inner, now, params) {
            Ok(()) => Ok(String::new()),
            Err(e) => {
                let refused = refusal(&inner, now, params, &e);
                inner.refused.push(refused);
                Err(e)
            }
        },
        "RecordLifecycleActionHeartbeat" => {
            heartbeat(&mut inner, now, params).map(|()| String::new())
        }
        "DescribeAutoScalingInstances" => describe_instances(&inner, now, params),
        "DescribeLifecycleHooks" => describe_hooks(&inner, params),
        "DescribeWarmPool" => describe_warm_pool(&inner, now, params),
        "" => {
            return Err(ApiError {
                status: 400,
                kind: "Sender",
                code: "MissingAction".into(),
                message: "The request must contain the parameter Action.".into(),
            })
        }
        other => {
            return Err(ApiError {
                status: 400,
                kind: "Sender",
                code: "InvalidAction".into(),
                message: format!("Could not find operation {other} for version 2011-01-01"),
            })
        }
    }?;
    Ok(format!(
        "<{action}Response xmlns=\"{NS}\">\n  {}\n  <ResponseMetadata>\n    <RequestId>{request_id}</RequestId>\n  </ResponseMetadata>\n</{action}Response>\n",
        if result.is_empty() {
            format!("<{action}Result/>")
        } else {
            format!("<{action}Result>\n{result}  </{action}Result>")
        }
    ))
}

/// The instance whose action for `hook` in `group` is waiting and matches the token or the
/// instance id given, with whether the token named it; the service's ValidationError
/// otherwise.
fn find_waiting(inner: &Inner, now: Instant, params: &Params) -> Result<(String, bool), ApiError> {
    let group = params
        .value("AutoScalingGroupName")
        .ok_or_else(|| ApiError::missing("AutoScalingGroupName"))?;
    let hook = params
        .value("LifecycleHookName")
        .ok_or_else(|| ApiError::missing("LifecycleHookName"))?;
    let token = params.value("LifecycleActionToken");
    let instance_id = params.value("InstanceId");
    if token.is_none() && instance_id.is_none() {
        return Err(ApiError::validation(
            "Either the LifecycleActionToken or the InstanceId must be specified",
        ));
    }
    let not_found = || ApiError::validation(no_active_action(token, instance_id.unwrap_or("")));
    let id = match (token, instance_id) {
        (Some(token), given) => match (inner.by_token(token), given) {
            (Some(id), Some(given)) if id != given => return Err(not_found()),
            (Some(id), _) => id.clone(),
            (None, _) => return Err(not_found()),
        },
        (None, Some(id)) => id.to_string(),
        (None, None) => return Err(not_found()),
    };
    let inst = inner.instances.get(&id).ok_or_else(not_found)?;
    let waiting = inst.group == group
        && inst
            .step
            .as_ref()
            .and_then(|s| s.waiting(now))
            .is_some_and(|a| a.hook == hook);
    if !waiting {
        return Err(not_found());
    }
    Ok((id, token.is_some()))
}

fn complete(inner: &mut Inner, now: Instant, params: &Params) -> Result<(), ApiError> {
    let result = params
        .value("LifecycleActionResult")
        .ok_or_else(|| ApiError::missing("LifecycleActionResult"))?
        .to_string();
    let (id, by_token) = find_waiting(inner, now, params)?;
    if result != "CONTINUE" && result != "ABANDON" {
        return Err(ApiError::validation(format!(
            "Invalid LifecycleActionResult {result}: must be CONTINUE or ABANDON"
        )));
    }
    inner.end_action(&id, now, Some(result), by_token);
    Ok(())
}

fn refusal(inner: &Inner, now: Instant, params: &Params, err: &ApiError) -> RefusedCompletion {
    let by_token = params
        .value("LifecycleActionToken")
        .and_then(|token| inner.by_token(token));
    let instance_id = params
        .value("InstanceId")
        .map(str::to_string)
        .or_else(|| by_token.cloned())
        .unwrap_or_default();
    let state = inner
        .instances
        .get(&instance_id)
        .map(|i| i.state(now).to_string())
        .unwrap_or_default();
    RefusedCompletion {
        instance_id,
        state,
        message: format!("{}: {}", err.code, err.message),
    }
}

fn heartbeat(inner: &mut Inner, now: Instant, params: &Params) -> Result<(), ApiError> {
    let (id, _) = find_waiting(inner, now, params)?;
    let since_start = inner.since_start(now);
    let Some(inst) = inner.instances.get_mut(&id) else {
        return Err(ApiError::validation(no_active_action(None, &id)));
    };
    let group = inst.group.clone();
    let Some(action) = inst.step.as_mut().and_then(|s| s.action.as_mut()) else {
        return Err(ApiError::validation(no_active_action(None, &id)));
    };
    action.last_heartbeat = Some(now);
    let beat = Heartbeat {
        group,
        hook: action.hook.clone(),
        transition: action.transition.clone(),
        instance_id: id,
        at: since_start,
    };
    inner.heartbeats.push(beat);
    Ok(())
}

/// The page of `members` a Describe call asked for (`MaxRecords`, `NextToken`), and the
/// token of the next page, if there is one.
fn page<T>(members: Vec<T>, params: &Params) -> Result<(Vec<T>, Option<String>), ApiError> {
    let max = match params.value("MaxRecords") {
        None => MAX_RECORDS,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_RECORDS).contains(&n) => n,
            _ => {
                return Err(ApiError::validation(format!(
                    "1 validation error detected: Value '{v}' at 'maxRecords' failed to satisfy constraint: Member must have value less than or equal to {MAX_RECORDS}"
                )))
            }
        },
    };
    let start = match params.value("NextToken") {
        None => 0,
        Some(token) => token
            .strip_prefix("page-")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n <= members.len())
            .ok_or_else(|| ApiError {
                status: 400,
                kind: "Sender",
                code: "InvalidNextToken".into(),
                message: format!("The token '{token}' is invalid."),
            })?,
    };
    let end = (start + max).min(members.len());
    let next = (end < members.len()).then(|| format!("page-{end}"));
    Ok((
        members.into_iter().skip(start).take(end - start).collect(),
        next,
    ))
}

fn next_token(next: Option<String>) -> String {
    next.map(|t| format!("    <NextToken>{}</NextToken>\n", esc(&t)))
        .unwrap_or_default()
}

fn describe_instances(inner: &Inner, now: Instant, params: &Params) -> Result<String, ApiError> {
    let ids = params.members("InstanceIds");
    if ids.len() > 50 {
        return Err(ApiError::validation(
            "The number of instance ids that may be passed in is limited to 50",
        ));
    }
    let wanted: Vec<&String> = if ids.is_empty() {
        inner.order.iter().collect()
    } else {
        ids.iter().collect()
    };
    let listed: Vec<(&String, &Instance)> = wanted
        .into_iter()
        .filter_map(|id| Some((id, inner.instances.get(id)?)))
        .filter(|(_, inst)| !gone(inst.state(now)))
        .collect();
    let (listed, next) = page(listed, params)?;
    let mut members = String::new();
    for (id, inst) in listed {
        let state = inst.state(now);
        members.push_str(&format!(
            "      <member>\n        <InstanceId>{}</InstanceId>\n        <InstanceType>{}</InstanceType>\n        <AutoScalingGroupName>{}</AutoScalingGroupName>\n        <AvailabilityZone>{}</AvailabilityZone>\n        <LifecycleState>{}</LifecycleState>\n        <HealthStatus>HEALTHY</HealthStatus>\n        <ProtectedFromScaleIn>false</ProtectedFromScaleIn>\n      </member>\n",
            esc(id),
            esc(&inst.instance_type),
            esc(&inst.group),
            esc(&inst.az),
            esc(state),
        ));
    }
    Ok(format!(
        "    <AutoScalingInstances>\n{members}    </AutoScalingInstances>\n{}",
        next_token(next)
    ))
}

/// The group's warm pool and the instances in it (any `Warmed:*` state but
/// `Warmed:Terminated`), a page at a time; a group without a warm pool has no
/// `WarmPoolConfiguration` and no instances.
fn describe_warm_pool(inner: &Inner, now: Instant, params: &Params) -> Result<String, ApiError> {
    let group = params
        .value("AutoScalingGroupName")
        .ok_or_else(|| ApiError::missing("AutoScalingGroupName"))?;
    if !inner.groups.contains_key(group) && !inner.warm_pools.contains_key(group) {
        return Err(ApiError::validation(format!("Group {group} not found")));
    }
    let mut out = String::new();
    if let Some(pool) = inner.warm_pools.get(group) {
        let reuse = if pool.reuse_on_scale_in {
            "      <InstanceReusePolicy>\n        <ReuseOnScaleIn>true</ReuseOnScaleIn>\n      </InstanceReusePolicy>\n"
        } else {
            ""
        };
        out.push_str(&format!(
            "    <WarmPoolConfiguration>\n      <MinSize>0</MinSize>\n      <PoolState>{}</PoolState>\n{reuse}    </WarmPoolConfiguration>\n",
            esc(&pool.pool_state)
        ));
    }
    let pooled: Vec<(&String, &Instance)> = inner
        .order
        .iter()
        .filter_map(|id| Some((id, inner.instances.get(id).filter(|i| i.group == group)?)))
        .filter(|(_, inst)| {
            let state = inst.state(now);
            state.starts_with("Warmed:") && !gone(state)
        })
        .collect();
    let (pooled, next) = page(pooled, params)?;
    let mut members = String::new();
    for (id, inst) in pooled {
        let state = inst.state(now);
        members.push_str(&format!(
            "      <member>\n        <InstanceId>{}</InstanceId>\n        <InstanceType>{}</InstanceType>\n        <AvailabilityZone>{}</AvailabilityZone>\n        <LifecycleState>{}</LifecycleState>\n        <HealthStatus>Healthy</HealthStatus>\n        <ProtectedFromScaleIn>false</ProtectedFromScaleIn>\n      </member>\n",
            esc(id),
            esc(&inst.instance_type),
            esc(&inst.az),
            esc(state),
        ));
    }
    out.push_str(&format!("    <Instances>\n{members}    </Instances>\n"));
    out.push_str(&next_token(next));
    Ok(out)
}

fn describe_hooks(inner: &Inner, params: &Params) -> Result<String, ApiError> {
    let group = params
        .value("AutoScalingGroupName")
        .ok_or_else(|| ApiError::missing("AutoScalingGroupName"))?;
    let hooks = inner
        .groups
        .get(group)
        .ok_or_else(|| ApiError::validation(format!("Group {group} not found")))?;
    let names = params.members("LifecycleHookNames");
    let mut members = String::new();
    for hook in hooks
        .iter()
        .filter(|h| names.is_empty() || names.contains(&h.name))
    {
        // Whole seconds, rounded up so that a sub-second test timeout does not read as 0.
        let heartbeat =
            hook.heartbeat_timeout.as_secs() + u64::from(hook.heartbeat_timeout.subsec_nanos() > 0);
        let global = (heartbeat * u64::from(GLOBAL_FACTOR)).min(MAX_GLOBAL_TIMEOUT.as_secs());
        members.push_str(&format!(
            "      <member>\n        <LifecycleHookName>{}</LifecycleHookName>\n        <AutoScalingGroupName>{}</AutoScalingGroupName>\n        <LifecycleTransition>{}</LifecycleTransition>\n        <HeartbeatTimeout>{heartbeat}</HeartbeatTimeout>\n        <GlobalTimeout>{global}</GlobalTimeout>\n        <DefaultResult>{}</DefaultResult>\n      </member>\n",
            esc(&hook.name),
            esc(group),
            esc(&hook.transition),
            esc(&hook.default_result),
        ));
    }
    Ok(format!(
        "    <LifecycleHooks>\n{members}    </LifecycleHooks>\n"
    ))
}

fn xml(status: u16, request_id: &str, body: String) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        code,
        [
            ("content-type", "text/xml".to_string()),
            ("x-amzn-requestid", request_id.to_string()),
        ],
        body,
    )
        .into_response()
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A random version-4 UUID, the shape of request ids and lifecycle action tokens.
fn uuid() -> String {
    let b: [u8; 16] = rand::rng().random();
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-{}{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        ["8", "9", "a", "b"][usize::from(b[8] & 3)],
        &hex[17..20],
        &hex[20..32]
    )
}

/// The message Auto Scaling sends to the hook's queue when it terminates `instance_id`
/// (the direct SQS shape).
pub fn termination_message(group: &str, hook: &str, instance_id: &str, token: &str) -> String {
    serde_json::json!({
        "Origin": "AutoScalingGroup",
        "Destination": "EC2",
        "LifecycleHookName": hook,
        "LifecycleTransition": TERMINATING,
        "AutoScalingGroupName": group,
        "EC2InstanceId": instance_id,
        "LifecycleActionToken": token,
        "AccountId": "123456789012",
        "RequestId": "4e5a7e4d-1b2c-4d3e-9f00-123456789abc",
        "Service": "AWS Auto Scaling",
        "Time": "2026-11-23T12:00:00.000Z"
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Fault, Match};
    use aws_sdk_autoscaling::config::retry::RetryConfig;
    use aws_sdk_autoscaling::config::{Credentials, Region};
    use aws_sdk_autoscaling::error::ProvideErrorMetadata;

    const GROUP: &str = "crawlers";
    const HOOK: &str = "drain";
    const ID: &str = "i-0a1b2c3d4e5f60718";

    fn client(url: &str) -> aws_sdk_autoscaling::Client {
        let conf = aws_sdk_autoscaling::Config::builder()
            .behavior_version_latest()
            .region(Region::new("us-east-1"))
            .endpoint_url(url)
            .credentials_provider(Credentials::new("AKID", "secret", None, None, "test"))
            .retry_config(RetryConfig::disabled())
            .build();
        aws_sdk_autoscaling::Client::from_conf(conf)
    }

    async fn bed(heartbeat_timeout: Duration) -> (AutoScalingServer, aws_sdk_autoscaling::Client) {
        let asg = AutoScalingServer::start().await;
        asg.add_group(
            GROUP,
            vec![HookSpec {
                name: HOOK.into(),
                transition: TERMINATING.into(),
                heartbeat_timeout,
                default_result: "ABANDON".into(),
            }],
        );
        asg.add_instance(GROUP, ID, "m5.large", "us-east-1b");
        let client = client(&asg.url());
        (asg, client)
    }

    async fn complete_by_id(
        client: &aws_sdk_autoscaling::Client,
    ) -> Result<
        (),
        aws_sdk_autoscaling::error::SdkError<
            aws_sdk_autoscaling::operation::complete_lifecycle_action::CompleteLifecycleActionError,
        >,
    > {
        client
            .complete_lifecycle_action()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name(HOOK)
            .lifecycle_action_result("CONTINUE")
            .instance_id(ID)
            .send()
            .await
            .map(|_| ())
    }

    #[tokio::test]
    async fn describe_instances_and_hooks() {
        let (asg, client) = bed(Duration::from_secs(300)).await;
        let out = client
            .describe_auto_scaling_instances()
            .instance_ids(ID)
            .instance_ids("i-elsewhere")
            .send()
            .await
            .expect("describe instances");
        let list = out.auto_scaling_instances();
        assert_eq!(list.len(), 1, "an instance outside every group is absent");
        assert_eq!(list[0].instance_id(), Some(ID));
        assert_eq!(list[0].auto_scaling_group_name(), Some(GROUP));
        assert_eq!(list[0].lifecycle_state(), Some("InService"));
        assert_eq!(list[0].health_status(), Some("HEALTHY"));

        let hooks = client
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(GROUP)
            .send()
            .await
            .expect("describe hooks");
        let hooks = hooks.lifecycle_hooks();
        assert_eq!(hooks.len(), 1);
        assert_eq!(hooks[0].lifecycle_hook_name(), Some(HOOK));
        assert_eq!(hooks[0].heartbeat_timeout(), Some(300));
        assert_eq!(hooks[0].global_timeout(), Some(30000));
        assert_eq!(hooks[0].default_result(), Some("ABANDON"));

        let err = client
            .describe_lifecycle_hooks()
            .auto_scaling_group_name("nope")
            .send()
            .await
            .expect_err("unknown group");
        assert_eq!(err.code(), Some("ValidationError"));

        let actions: Vec<String> = asg.requests().iter().map(|r| r.action.clone()).collect();
        assert_eq!(
            actions,
            vec![
                "DescribeAutoScalingInstances",
                "DescribeLifecycleHooks",
                "DescribeLifecycleHooks"
            ]
        );
        assert_eq!(asg.requests()[2].status, 400);
    }

    #[tokio::test]
    async fn complete_only_while_waiting() {
        let (asg, client) = bed(Duration::from_secs(300)).await;
        let err = complete_by_id(&client).await.expect_err("in service");
        assert_eq!(err.code(), Some("ValidationError"));

        let token = asg
            .begin_termination(ID, Duration::from_millis(300))
            .expect("a terminating hook");
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("Terminating"));
        let err = complete_by_id(&client).await.expect_err("not waiting yet");
        assert_eq!(err.code(), Some("ValidationError"));
        assert!(
            err.message()
                .unwrap_or("")
                .starts_with("No active Lifecycle Action found with instance ID"),
            "{err:?}"
        );

        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("Terminating:Wait"));
        let err = client
            .complete_lifecycle_action()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name(HOOK)
            .lifecycle_action_result("CONTINUE")
            .lifecycle_action_token("00000000-0000-4000-8000-000000000000")
            .send()
            .await
            .expect_err("wrong token");
        assert!(err
            .message()
            .unwrap_or("")
            .starts_with("No active Lifecycle Action found with token"));
        client
            .complete_lifecycle_action()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name(HOOK)
            .lifecycle_action_result("CONTINUE")
            .lifecycle_action_token(&token)
            .send()
            .await
            .expect("completes by token");
        assert_eq!(
            asg.lifecycle_state(ID).as_deref(),
            Some("Terminating:Proceed")
        );
        let err = complete_by_id(&client).await.expect_err("already done");
        assert_eq!(err.code(), Some("ValidationError"));
        assert!(err
            .message()
            .unwrap_or("")
            .starts_with("No active Lifecycle Action found with instance ID"));

        let done = asg.completions();
        assert_eq!(done.len(), 1);
        assert!(done[0].by_token && !done[0].by_timeout);
        assert_eq!(done[0].result, "CONTINUE");
        assert_eq!(done[0].hook, HOOK);

        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("Terminated"));
        let out = client
            .describe_auto_scaling_instances()
            .instance_ids(ID)
            .send()
            .await
            .expect("describe");
        assert!(
            out.auto_scaling_instances().is_empty(),
            "gone from the group"
        );
    }

    #[tokio::test]
    async fn complete_by_instance_id_and_faults() {
        let (asg, client) = bed(Duration::from_secs(300)).await;
        asg.begin_termination(ID, Duration::ZERO);
        asg.fail(
            Match::action("CompleteLifecycleAction"),
            Fault::Throttling,
            1,
        );
        asg.fail(
            Match::action("DescribeAutoScalingInstances"),
            Fault::Status(503),
            1,
        );
        asg.fail(
            Match::action("RecordLifecycleActionHeartbeat"),
            Fault::ValidationError,
            1,
        );
        let err = complete_by_id(&client).await.expect_err("throttled");
        assert_eq!(err.code(), Some("Throttling"));
        let err = client
            .describe_auto_scaling_instances()
            .instance_ids(ID)
            .send()
            .await
            .expect_err("unavailable");
        assert_eq!(err.code(), Some("ServiceUnavailable"));
        let err = client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name(HOOK)
            .instance_id(ID)
            .send()
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Some("ValidationError"));
        assert_eq!(
            err.message(),
            Some(format!("No active Lifecycle Action found with instance ID {ID}").as_str())
        );
        assert!(
            asg.heartbeats().is_empty(),
            "an injected fault has no effect"
        );
        complete_by_id(&client).await.expect("completes by id");
        let done = asg.completions();
        assert_eq!(done.len(), 1);
        assert!(!done[0].by_token && !done[0].by_timeout);
        assert!(
            asg.refused_completions().is_empty(),
            "injected, not refused"
        );
        let statuses: Vec<u16> = asg.requests().iter().map(|r| r.status).collect();
        assert_eq!(statuses, vec![400, 503, 400, 200]);
    }

    #[tokio::test]
    async fn heartbeat_restarts_the_timeout_then_it_times_out() {
        let timeout = Duration::from_secs(2);
        let (asg, client) = bed(timeout).await;
        asg.begin_termination(ID, Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name(HOOK)
            .instance_id(ID)
            .send()
            .await
            .expect("heartbeat");
        let beats = asg.heartbeats();
        assert_eq!(beats.len(), 1);
        tokio::time::sleep(Duration::from_millis(1200)).await;
        // 2.4 s in: past the first timeout, within the restarted one.
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("Terminating:Wait"));
        assert!(asg.completions().is_empty());
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let state = asg.lifecycle_state(ID);
        assert!(
            matches!(state.as_deref(), Some("Terminating:Proceed" | "Terminated")),
            "{state:?}"
        );
        let done = asg.completions();
        assert_eq!(done.len(), 1);
        assert!(done[0].by_timeout && !done[0].by_token);
        assert_eq!(done[0].result, "ABANDON");
        assert_eq!(
            done[0].at - beats[0].at,
            timeout,
            "timed out a timeout after the beat"
        );
        let err = client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name(HOOK)
            .instance_id(ID)
            .send()
            .await
            .expect_err("timed out");
        assert_eq!(err.code(), Some("ValidationError"));
    }

    #[test]
    fn heartbeats_never_extend_past_the_global_cap() {
        let start = Instant::now();
        let mut action = Action {
            hook: HOOK.into(),
            transition: TERMINATING.into(),
            heartbeat_timeout: Duration::from_secs(60),
            default_result: "ABANDON".into(),
            token: uuid(),
            last_heartbeat: None,
            done: None,
        };
        assert_eq!(action.deadline(start), start + Duration::from_secs(60));
        action.last_heartbeat = Some(start + Duration::from_secs(5990));
        assert_eq!(action.deadline(start), start + Duration::from_secs(6000));
        action.heartbeat_timeout = Duration::from_secs(7200);
        action.last_heartbeat = Some(start + Duration::from_secs(170_000));
        assert_eq!(action.deadline(start), start + MAX_GLOBAL_TIMEOUT);
    }

    #[tokio::test]
    async fn no_terminating_hook_goes_straight_on() {
        let asg = AutoScalingServer::start().await;
        asg.add_group("plain", vec![]);
        asg.add_instance("plain", "i-1", "t3.micro", "us-east-1a");
        assert_eq!(asg.begin_termination("i-1", Duration::ZERO), None);
        assert_eq!(
            asg.lifecycle_state("i-1").as_deref(),
            Some("Terminating:Proceed")
        );
        assert_eq!(asg.lifecycle_state("i-2"), None);
    }

    #[tokio::test]
    async fn bad_requests_get_service_errors() {
        let asg = AutoScalingServer::start().await;
        let http = reqwest::Client::new();
        let resp = http
            .post(asg.url())
            .header("content-type", "application/x-www-form-urlencoded")
            .body("Action=LaunchRockets&Version=2011-01-01")
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status().as_u16(), 400);
        assert!(resp
            .text()
            .await
            .expect("body")
            .contains("<Code>InvalidAction</Code>"));
        let resp = http
            .post(asg.url())
            .body("Action=CompleteLifecycleAction&Version=2011-01-01")
            .send()
            .await
            .expect("POST");
        assert_eq!(resp.status().as_u16(), 400);
        let body = resp.text().await.expect("body");
        assert!(body.contains("<Code>ValidationError</Code>"), "{body}");
        assert_eq!(asg.requests()[0].action, "LaunchRockets");
    }

    const LAUNCH_HOOK: &str = "launching";
    const PROCEED: Duration = Duration::from_millis(1100);

    fn drain_hook(heartbeat_timeout: Duration) -> HookSpec {
        HookSpec {
            name: HOOK.into(),
            transition: TERMINATING.into(),
            heartbeat_timeout,
            default_result: "ABANDON".into(),
        }
    }

    fn launch_hook(heartbeat_timeout: Duration, default_result: &str) -> HookSpec {
        HookSpec {
            name: LAUNCH_HOOK.into(),
            transition: LAUNCHING.into(),
            heartbeat_timeout,
            default_result: default_result.into(),
        }
    }

    /// A stand-in whose group has both hooks (five-minute timeouts), and its client.
    async fn hooked() -> (AutoScalingServer, aws_sdk_autoscaling::Client) {
        let asg = AutoScalingServer::start().await;
        let long = Duration::from_secs(300);
        asg.add_group(GROUP, vec![drain_hook(long), launch_hook(long, "ABANDON")]);
        let client = client(&asg.url());
        (asg, client)
    }

    /// `CompleteLifecycleAction` for `hook` by instance id; the error's code and message.
    async fn complete_as(
        client: &aws_sdk_autoscaling::Client,
        hook: &str,
        result: &str,
        instance_id: &str,
    ) -> Result<(), (String, String)> {
        client
            .complete_lifecycle_action()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name(hook)
            .lifecycle_action_result(result)
            .instance_id(instance_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                (
                    e.code().unwrap_or("").to_string(),
                    e.message().unwrap_or("").to_string(),
                )
            })
    }

    /// What `DescribeAutoScalingInstances` says of one instance; `None` when absent.
    async fn described_state(
        client: &aws_sdk_autoscaling::Client,
        instance_id: &str,
    ) -> Option<String> {
        let out = client
            .describe_auto_scaling_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .expect("describe instances");
        out.auto_scaling_instances()
            .first()
            .and_then(|i| i.lifecycle_state())
            .map(str::to_string)
    }

    /// The pool's instances as `DescribeWarmPool` lists them: (id, state).
    async fn pool(client: &aws_sdk_autoscaling::Client) -> Vec<(String, String)> {
        let out = client
            .describe_warm_pool()
            .auto_scaling_group_name(GROUP)
            .send()
            .await
            .expect("describe warm pool");
        out.instances()
            .iter()
            .map(|i| {
                (
                    i.instance_id().unwrap_or("").to_string(),
                    i.lifecycle_state()
                        .map(|s| s.as_str().to_string())
                        .unwrap_or_default(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn launch_waits_for_its_hook_then_continue_goes_in_service() {
        let (asg, client) = hooked().await;
        let token = asg
            .launch_instance(
                GROUP,
                ID,
                "m5.large",
                "us-east-1b",
                Duration::from_millis(500),
            )
            .expect("a launching hook");
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("Pending"));
        let (code, message) = complete_as(&client, LAUNCH_HOOK, "CONTINUE", ID)
            .await
            .expect_err("not waiting yet");
        assert_eq!(code, "ValidationError");
        assert_eq!(
            message,
            format!("No active Lifecycle Action found with instance ID {ID}")
        );
        let refused = asg.refused_completions();
        assert_eq!(refused.len(), 1);
        assert_eq!(
            (refused[0].instance_id.as_str(), refused[0].state.as_str()),
            (ID, "Pending")
        );

        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            described_state(&client, ID).await.as_deref(),
            Some("Pending:Wait")
        );
        let err = complete_as(&client, HOOK, "CONTINUE", ID)
            .await
            .expect_err("the termination hook is not the one waiting");
        assert_eq!(err.0, "ValidationError");
        client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name(LAUNCH_HOOK)
            .instance_id(ID)
            .send()
            .await
            .expect("heartbeat on the launching action");
        let beats = asg.heartbeats();
        assert_eq!(beats.len(), 1);
        assert_eq!(
            (beats[0].hook.as_str(), beats[0].transition.as_str()),
            (LAUNCH_HOOK, LAUNCHING)
        );
        client
            .complete_lifecycle_action()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name(LAUNCH_HOOK)
            .lifecycle_action_result("CONTINUE")
            .lifecycle_action_token(&token)
            .send()
            .await
            .expect("completes by token");
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("Pending:Proceed"));
        let err = complete_as(&client, LAUNCH_HOOK, "CONTINUE", ID)
            .await
            .expect_err("already done");
        assert_eq!(err.0, "ValidationError");
        let done = asg.completions();
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].transition, LAUNCHING);
        assert!(done[0].by_token && !done[0].by_timeout);
        assert_eq!(done[0].result, "CONTINUE");

        tokio::time::sleep(PROCEED).await;
        assert_eq!(
            described_state(&client, ID).await.as_deref(),
            Some("InService")
        );
        // In service now, so it terminates as any other instance, through its own hook.
        let drain = asg
            .begin_termination(ID, Duration::ZERO)
            .expect("a termination hook");
        assert_ne!(drain, token);
        complete_as(&client, HOOK, "CONTINUE", ID)
            .await
            .expect("termination completes");
        let done = asg.completions();
        assert_eq!(done.len(), 2);
        assert_eq!(
            (done[1].hook.as_str(), done[1].transition.as_str()),
            (HOOK, TERMINATING)
        );
    }

    #[tokio::test]
    async fn an_abandoned_launch_is_terminated_through_the_termination_hook() {
        let (asg, client) = hooked().await;
        asg.launch_instance(GROUP, ID, "m5.large", "us-east-1b", Duration::ZERO);
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("Pending:Wait"));
        complete_as(&client, LAUNCH_HOOK, "ABANDON", ID)
            .await
            .expect("abandons");
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("Terminating"));
        let err = complete_as(&client, HOOK, "CONTINUE", ID)
            .await
            .expect_err("before Terminating:Wait");
        assert_eq!(err.0, "ValidationError");
        assert_eq!(asg.refused_completions()[0].state, "Terminating");

        tokio::time::sleep(PROCEED).await;
        assert_eq!(
            described_state(&client, ID).await.as_deref(),
            Some("Terminating:Wait")
        );
        let token = asg.action_token(ID).expect("the termination's token");
        assert_eq!(
            asg.begin_termination(ID, Duration::ZERO),
            Some(token),
            "already terminating"
        );
        complete_as(&client, HOOK, "CONTINUE", ID)
            .await
            .expect("termination completes");
        assert_eq!(
            asg.lifecycle_state(ID).as_deref(),
            Some("Terminating:Proceed")
        );
        let done: Vec<(String, String)> = asg
            .completions()
            .into_iter()
            .map(|c| (c.transition, c.result))
            .collect();
        assert_eq!(
            done,
            vec![
                (LAUNCHING.to_string(), "ABANDON".to_string()),
                (TERMINATING.to_string(), "CONTINUE".to_string())
            ]
        );
        tokio::time::sleep(PROCEED).await;
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("Terminated"));
        assert_eq!(
            described_state(&client, ID).await,
            None,
            "gone from the group"
        );
    }

    #[tokio::test]
    async fn a_launch_timeout_abandons_and_the_termination_then_times_out_too() {
        let asg = AutoScalingServer::start().await;
        let (launch, drain) = (Duration::from_millis(100), Duration::from_millis(200));
        asg.add_group(
            GROUP,
            vec![launch_hook(launch, "ABANDON"), drain_hook(drain)],
        );
        asg.launch_instance(GROUP, ID, "m5.large", "us-east-1b", Duration::ZERO);
        // Nobody looks until both timeouts are long past: the one pass over the deadlines
        // must apply the second, which only the first one's ABANDON started.
        tokio::time::sleep(Duration::from_millis(2600)).await;
        let done = asg.completions();
        assert_eq!(done.len(), 2, "{done:?}");
        assert!(done.iter().all(|c| c.by_timeout && c.result == "ABANDON"));
        assert_eq!(done[0].transition, LAUNCHING);
        assert_eq!(done[1].transition, TERMINATING);
        assert_eq!(done[1].at - done[0].at, ABANDON_LAG + drain);
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("Terminated"));
    }

    #[tokio::test]
    async fn a_launch_timeout_with_continue_goes_in_service() {
        let asg = AutoScalingServer::start().await;
        let timeout = Duration::from_millis(300);
        asg.add_group(GROUP, vec![launch_hook(timeout, "CONTINUE")]);
        asg.launch_instance(GROUP, ID, "m5.large", "us-east-1b", Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("Pending:Proceed"));
        let done = asg.completions();
        assert_eq!(done.len(), 1);
        assert!(done[0].by_timeout && done[0].result == "CONTINUE");
        // At the deadline (the launch came just after the start), not when someone looked.
        assert!(
            done[0].at >= timeout && done[0].at < timeout + Duration::from_millis(50),
            "{:?}",
            done[0].at
        );
        tokio::time::sleep(PROCEED).await;
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("InService"));
    }

    #[tokio::test]
    async fn without_a_launching_hook_a_launch_goes_straight_on() {
        let asg = AutoScalingServer::start().await;
        asg.add_group(GROUP, vec![drain_hook(Duration::from_secs(300))]);
        let lag = Duration::from_millis(300);
        assert_eq!(
            asg.launch_instance(GROUP, ID, "m5.large", "us-east-1b", lag),
            None
        );
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("Pending"));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("Pending:Proceed"));
        tokio::time::sleep(PROCEED).await;
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("InService"));
        assert!(asg.completions().is_empty());
    }

    #[tokio::test]
    async fn a_warmed_instance_enters_leaves_returns_and_is_terminated() {
        let (asg, client) = hooked().await;
        asg.warm_instance(
            GROUP,
            ID,
            "m5.large",
            "us-east-1b",
            Duration::ZERO,
            "Warmed:Stopped",
        )
        .expect("a launching hook");
        assert_eq!(
            pool(&client).await,
            vec![(ID.to_string(), "Warmed:Pending:Wait".to_string())]
        );
        let out = client
            .describe_auto_scaling_instances()
            .instance_ids(ID)
            .send()
            .await
            .expect("describe instances");
        let listed = &out.auto_scaling_instances()[0];
        assert_eq!(listed.lifecycle_state(), Some("Warmed:Pending:Wait"));
        assert_eq!(listed.auto_scaling_group_name(), Some(GROUP));
        let err = complete_as(&client, HOOK, "CONTINUE", ID)
            .await
            .expect_err("not this hook");
        assert_eq!(err.0, "ValidationError");
        complete_as(&client, LAUNCH_HOOK, "CONTINUE", ID)
            .await
            .expect("warming completes");
        assert_eq!(
            asg.lifecycle_state(ID).as_deref(),
            Some("Warmed:Pending:Proceed")
        );
        assert!(
            !asg.leave_warm_pool(ID, Duration::ZERO),
            "not in the pool yet"
        );
        tokio::time::sleep(PROCEED).await;
        assert_eq!(
            described_state(&client, ID).await.as_deref(),
            Some("Warmed:Stopped")
        );

        // Scale-out from the pool: the launching hook pauses it again, at Pending:Wait.
        assert!(asg.leave_warm_pool(ID, Duration::ZERO));
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("Pending:Wait"));
        assert!(pool(&client).await.is_empty(), "out of the pool");
        complete_as(&client, LAUNCH_HOOK, "CONTINUE", ID)
            .await
            .expect("leaving completes");
        tokio::time::sleep(PROCEED).await;
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("InService"));

        // Scale-in with reuse: back to the pool, paused for the termination hook.
        assert!(asg.return_to_warm_pool(ID, Duration::ZERO));
        assert_eq!(
            asg.lifecycle_state(ID).as_deref(),
            Some("Warmed:Pending:Wait")
        );
        let err = complete_as(&client, LAUNCH_HOOK, "CONTINUE", ID)
            .await
            .expect_err("a returning instance waits on the termination hook");
        assert_eq!(err.0, "ValidationError");
        complete_as(&client, HOOK, "ABANDON", ID)
            .await
            .expect("returning completes");
        assert_eq!(
            asg.lifecycle_state(ID).as_deref(),
            Some("Warmed:Pending:Proceed")
        );
        tokio::time::sleep(PROCEED).await;
        assert_eq!(
            asg.lifecycle_state(ID).as_deref(),
            Some("Warmed:Stopped"),
            "ABANDON goes on too"
        );
        let out = client
            .describe_warm_pool()
            .auto_scaling_group_name(GROUP)
            .send()
            .await
            .expect("describe warm pool");
        let conf = out
            .warm_pool_configuration()
            .expect("the pool's configuration");
        assert_eq!(conf.pool_state().map(|s| s.as_str()), Some("Stopped"));
        assert_eq!(conf.min_size(), Some(0));
        assert_eq!(
            conf.instance_reuse_policy()
                .and_then(|p| p.reuse_on_scale_in()),
            Some(true)
        );
        let member = &out.instances()[0];
        assert_eq!(member.instance_id(), Some(ID));
        assert_eq!(member.instance_type(), Some("m5.large"));
        assert_eq!(member.availability_zone(), Some("us-east-1b"));
        assert_eq!(member.health_status(), Some("Healthy"));
        assert_eq!(member.protected_from_scale_in(), Some(false));

        // Terminated from the pool, through the termination hook.
        assert!(
            !asg.return_to_warm_pool(ID, Duration::ZERO),
            "already there"
        );
        assert_eq!(
            asg.begin_termination(ID, Duration::ZERO),
            None,
            "not in service"
        );
        assert!(asg.terminate_warmed(ID, Duration::ZERO));
        assert_eq!(
            pool(&client).await,
            vec![(ID.to_string(), "Warmed:Terminating:Wait".to_string())]
        );
        client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(GROUP)
            .lifecycle_hook_name(HOOK)
            .instance_id(ID)
            .send()
            .await
            .expect("heartbeat while terminating from the pool");
        complete_as(&client, HOOK, "CONTINUE", ID)
            .await
            .expect("termination completes");
        assert_eq!(
            asg.lifecycle_state(ID).as_deref(),
            Some("Warmed:Terminating:Proceed")
        );
        tokio::time::sleep(PROCEED).await;
        assert_eq!(
            asg.lifecycle_state(ID).as_deref(),
            Some("Warmed:Terminated")
        );
        assert!(pool(&client).await.is_empty());
        assert_eq!(
            described_state(&client, ID).await,
            None,
            "absent everywhere"
        );

        let done: Vec<(String, String)> = asg
            .completions()
            .into_iter()
            .map(|c| (c.hook, c.result))
            .collect();
        let want = [
            (LAUNCH_HOOK, "CONTINUE"),
            (LAUNCH_HOOK, "CONTINUE"),
            (HOOK, "ABANDON"),
            (HOOK, "CONTINUE"),
        ];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(h, r)| (h.to_string(), r.to_string()))
            .collect();
        assert_eq!(done, want);
    }

    #[tokio::test]
    async fn an_abandoned_warm_launch_leaves_the_pool() {
        let asg = AutoScalingServer::start().await;
        asg.add_group(
            GROUP,
            vec![launch_hook(Duration::from_secs(300), "CONTINUE")],
        );
        let client = client(&asg.url());
        asg.warm_instance(
            GROUP,
            ID,
            "m5.large",
            "us-east-1b",
            Duration::ZERO,
            "Warmed:Running",
        );
        complete_as(&client, LAUNCH_HOOK, "ABANDON", ID)
            .await
            .expect("abandons");
        assert_eq!(
            pool(&client).await,
            vec![(ID.to_string(), "Warmed:Terminating".to_string())]
        );
        tokio::time::sleep(PROCEED).await;
        // No termination hook: straight on.
        assert_eq!(
            asg.lifecycle_state(ID).as_deref(),
            Some("Warmed:Terminating:Proceed")
        );
        tokio::time::sleep(PROCEED).await;
        assert_eq!(
            asg.lifecycle_state(ID).as_deref(),
            Some("Warmed:Terminated")
        );
        assert!(pool(&client).await.is_empty());
        assert_eq!(described_state(&client, ID).await, None);
    }

    #[tokio::test]
    async fn a_warmed_instance_without_hooks_rests_in_its_pool_state() {
        let asg = AutoScalingServer::start().await;
        asg.add_group(GROUP, vec![]);
        let lag = Duration::from_millis(300);
        assert_eq!(
            asg.warm_instance(
                GROUP,
                ID,
                "m5.large",
                "us-east-1b",
                lag,
                "Warmed:Hibernated"
            ),
            None
        );
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("Warmed:Pending"));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            asg.lifecycle_state(ID).as_deref(),
            Some("Warmed:Pending:Proceed")
        );
        tokio::time::sleep(PROCEED).await;
        assert_eq!(
            asg.lifecycle_state(ID).as_deref(),
            Some("Warmed:Hibernated")
        );
        assert!(asg.leave_warm_pool(ID, Duration::ZERO));
        tokio::time::sleep(PROCEED).await;
        assert_eq!(asg.lifecycle_state(ID).as_deref(), Some("InService"));
        assert!(asg.return_to_warm_pool(ID, Duration::ZERO));
        tokio::time::sleep(PROCEED).await;
        assert_eq!(
            asg.lifecycle_state(ID).as_deref(),
            Some("Warmed:Hibernated"),
            "back to the state it had"
        );
        assert!(asg.completions().is_empty());
    }

    #[tokio::test]
    async fn moves_from_the_wrong_state_change_nothing() {
        let (asg, _client) = hooked().await;
        asg.add_instance(GROUP, "i-in", "m5.large", "us-east-1b");
        asg.launch_instance(GROUP, "i-new", "m5.large", "us-east-1b", Duration::ZERO);
        assert!(!asg.leave_warm_pool("i-in", Duration::ZERO));
        assert!(!asg.terminate_warmed("i-in", Duration::ZERO));
        assert!(!asg.return_to_warm_pool("i-new", Duration::ZERO));
        assert_eq!(asg.begin_termination("i-new", Duration::ZERO), None);
        assert_eq!(
            asg.lifecycle_state("i-new").as_deref(),
            Some("Pending:Wait")
        );
        assert_eq!(asg.lifecycle_state("i-in").as_deref(), Some("InService"));
        assert!(!asg.leave_warm_pool("i-nobody", Duration::ZERO));
        assert!(!asg.return_to_warm_pool("i-nobody", Duration::ZERO));
        assert!(!asg.terminate_warmed("i-nobody", Duration::ZERO));
        assert_eq!(asg.action_token("i-in"), None);
    }

    #[tokio::test]
    async fn describe_warm_pool_of_groups_without_one() {
        let (asg, client) = hooked().await;
        asg.add_instance(GROUP, ID, "m5.large", "us-east-1b");
        let out = client
            .describe_warm_pool()
            .auto_scaling_group_name(GROUP)
            .send()
            .await
            .expect("a group without a pool");
        assert!(out.warm_pool_configuration().is_none());
        assert!(
            out.instances().is_empty(),
            "in-service instances are not in the pool"
        );
        let err = client
            .describe_warm_pool()
            .auto_scaling_group_name("nope")
            .send()
            .await
            .expect_err("unknown group");
        assert_eq!(err.code(), Some("ValidationError"));
        assert_eq!(asg.requests()[1].status, 400);
    }

    #[tokio::test]
    async fn a_vanished_instance_is_known_to_no_call() {
        let (asg, client) = bed(Duration::from_secs(300)).await;
        assert!(asg.vanish(ID));
        assert!(!asg.vanish(ID), "gone already");
        assert_eq!(asg.lifecycle_state(ID), None);
        let out = client
            .describe_auto_scaling_instances()
            .instance_ids(ID)
            .send()
            .await
            .expect("describe");
        assert!(out.auto_scaling_instances().is_empty());
        let err = complete_by_id(&client).await.expect_err("nothing waits");
        assert_eq!(err.code(), Some("ValidationError"));
    }

    #[tokio::test]
    async fn describe_calls_page_fifty_at_most() {
        let (asg, client) = bed(Duration::from_secs(300)).await;
        let ids: Vec<String> = (0..60).map(|n| format!("i-{n:017x}")).collect();
        for id in &ids {
            asg.add_instance(GROUP, id, "m5.large", "us-east-1b");
        }
        // Every instance (no ids given): 61, on two pages of 50 and 11.
        let first = client
            .describe_auto_scaling_instances()
            .send()
            .await
            .expect("first page");
        assert_eq!(first.auto_scaling_instances().len(), 50);
        let token = first.next_token().expect("a next page").to_string();
        let second = client
            .describe_auto_scaling_instances()
            .next_token(token)
            .send()
            .await
            .expect("second page");
        assert_eq!(second.auto_scaling_instances().len(), 11);
        assert_eq!(second.next_token(), None);
        // A smaller page, as asked.
        let small = client
            .describe_auto_scaling_instances()
            .set_instance_ids(Some(ids[..5].to_vec()))
            .max_records(2)
            .send()
            .await
            .expect("a page of 2");
        assert_eq!(small.auto_scaling_instances().len(), 2);
        assert!(small.next_token().is_some());
        // More than 50 ids, a page over 50 or a token of nothing: the service's errors.
        let err = client
            .describe_auto_scaling_instances()
            .set_instance_ids(Some(ids[..51].to_vec()))
            .send()
            .await
            .expect_err("51 ids");
        assert_eq!(err.code(), Some("ValidationError"));
        let err = client
            .describe_auto_scaling_instances()
            .max_records(51)
            .send()
            .await
            .expect_err("51 a page");
        assert_eq!(err.code(), Some("ValidationError"));
        let err = client
            .describe_auto_scaling_instances()
            .next_token("forged")
            .send()
            .await
            .expect_err("a forged token");
        assert_eq!(err.code(), Some("InvalidNextToken"));

        // The warm pool pages the same way.
        for n in 0..55 {
            asg.warm_instance(
                GROUP,
                &format!("i-warm{n:013x}"),
                "m5.large",
                "us-east-1b",
                Duration::ZERO,
                "Warmed:Stopped",
            );
        }
        let first = client
            .describe_warm_pool()
            .auto_scaling_group_name(GROUP)
            .send()
            .await
            .expect("first page");
        assert_eq!(first.instances().len(), 50);
        let second = client
            .describe_warm_pool()
            .auto_scaling_group_name(GROUP)
            .next_token(first.next_token().expect("a next page"))
            .send()
            .await
            .expect("second page");
        assert_eq!(second.instances().len(), 5);
        assert_eq!(second.next_token(), None);
    }
}
