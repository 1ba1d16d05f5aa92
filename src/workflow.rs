//! The one consumer of terminations: take the host out of the cluster, complete the
//! lifecycle action, page when something really failed.
//!
//! The first termination of an instance starts the work; later ones for the same instance
//! (a duplicate delivery, the IMDS state noticed after the SQS message) join it and get the
//! same outcome. Progress is recorded in the state dir before every step that matters, so
//! that a drover killed mid-way resumes where it stopped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::autoscaling::{AutoScaling, AutoScalingError, GroupMembership};
use crate::cluster::{ClusterManager, TakeOutPlan};
use crate::config::{Config, LifecycleResult};
use crate::docker::AgentDocker;
use crate::lifecycle::{self, Completion, HookTarget};
use crate::pager::{Incident, Pager, Severity};
use crate::state::{now_rfc3339, StateDir};
use crate::termination::{Outcome, Source, Termination};

/// Budget for completing the lifecycle action once the take-out has ended. The group may
/// lag `Terminating:Wait` by a while; heartbeats keep the action alive meanwhile.
pub const COMPLETE_BUDGET: Duration = Duration::from_secs(300);
/// Budget for paging, so that paging never holds the hook for long.
pub const PAGE_BUDGET: Duration = Duration::from_secs(30);
/// Budget for finding a host before anything else.
const FIND_BUDGET: Duration = Duration::from_secs(60);

/// What Auto Scaling says about the lifecycle action to answer.
#[derive(Debug, Clone)]
enum HookLookup {
    Found(HookTarget),
    /// Certainly nothing to complete: no group, no termination hook, not terminating.
    NoAction,
    /// Auto Scaling could not tell; an action may be waiting.
    Unknown(String),
}

/// What the state dir knows about one instance's take-out.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TakeOutRecord {
    pub instance_id: String,
    pub host_id: Option<String>,
    pub group: Option<String>,
    pub hook: Option<String>,
    pub source: String,
    pub started_at: String,
    pub taken_out: bool,
    pub hook_completed: bool,
    /// An incident is open for this instance (resolve it on a later success).
    pub paged: bool,
    pub timeline: Vec<(String, String)>,
}

impl TakeOutRecord {
    /// Both halves done: nothing left to do for this instance.
    pub fn finished(&self) -> bool {
        self.taken_out && self.hook_completed
    }
}

/// The record's file name for an instance. Instance ids are checked where they enter
/// (`i-` and hex), so they are safe in a file name.
pub fn record_file(instance_id: &str) -> String {
    let safe: String = instance_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("takeout-{safe}.json")
}

/// An ordered, shared log of what happened, for the record and the page.
#[derive(Clone, Default)]
struct Timeline(Arc<Mutex<Vec<(String, String)>>>);

impl Timeline {
    fn push(&self, event: impl Into<String>) {
        let event = event.into();
        tracing::info!("{event}");
        if let Ok(mut t) = self.0.lock() {
            t.push((now_rfc3339(), event));
        }
    }

    fn entries(&self) -> Vec<(String, String)> {
        self.0.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// Everything the workflow needs, built once by the command that runs it.
pub struct Workflow<C: ClusterManager> {
    config: Arc<Config>,
    own_instance: String,
    /// The own group as the instance tags told it, which saves a Describe call.
    own_group: Option<String>,
    cluster: C,
    asg: Option<AutoScaling>,
    pager: Pager,
    state: StateDir,
    in_flight: Mutex<HashMap<String, watch::Receiver<Option<Outcome>>>>,
    settled: Mutex<HashMap<String, Outcome>>,
}

impl<C: ClusterManager + 'static> Workflow<C> {
    pub fn new(
        config: Arc<Config>,
        own_instance: String,
        own_group: Option<String>,
        cluster: C,
        asg: Option<AutoScaling>,
        pager: Pager,
    ) -> Workflow<C> {
        let state = StateDir::new(&config.state.dir);
        Workflow {
            config,
            own_instance,
            own_group,
            cluster,
            asg,
            pager,
            state,
            in_flight: Mutex::new(HashMap::new()),
            settled: Mutex::new(HashMap::new()),
        }
    }

    /// Consumes terminations until `stop` is cancelled; work already started goes on in its
    /// own task (it is bounded by `drain_timeout`) and is not cut off.
    pub async fn run(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<Termination>,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                next = rx.recv() => match next {
                    Some(t) => self.dispatch(t),
                    None => return,
                },
            }
        }
    }

    /// Starts the work for a termination, or joins the work already under way.
    pub fn dispatch(self: &Arc<Self>, mut t: Termination) {
        let reply = t.reply.take();
        let settled = self
            .settled
            .lock()
            .ok()
            .and_then(|s| s.get(&t.instance_id).copied());
        if let Some(outcome) = settled.filter(|o| o.settles_message()) {
            tracing::info!(instance_id = %t.instance_id, source = %t.source, "already handled; {outcome:?}");
            if let Some(reply) = reply {
                let _ = reply.send(outcome);
            }
            return;
        }
        let joined = self
            .in_flight
            .lock()
            .ok()
            .and_then(|m| m.get(&t.instance_id).cloned());
        if let Some(mut watch) = joined {
            tracing::info!(instance_id = %t.instance_id, source = %t.source, "joins the take-out already under way");
            tokio::spawn(async move {
                let outcome = loop {
                    if let Some(o) = *watch.borrow() {
                        break o;
                    }
                    if watch.changed().await.is_err() {
                        break Outcome::NotCompleted;
                    }
                };
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
            });
            return;
        }
        let (tx, rx) = watch::channel(None);
        if let Ok(mut m) = self.in_flight.lock() {
            m.insert(t.instance_id.clone(), rx);
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let instance = t.instance_id.clone();
            let outcome = this.handle(t).await;
            if let Ok(mut s) = this.settled.lock() {
                s.insert(instance.clone(), outcome);
            }
            if let Ok(mut m) = this.in_flight.lock() {
                m.remove(&instance);
            }
            let _ = tx.send(Some(outcome));
            if let Some(reply) = reply {
                let _ = reply.send(outcome);
            }
        });
    }

    /// Whether this instance's own take-out is under way.
    pub fn is_in_flight(&self, instance_id: &str) -> bool {
        self.in_flight
            .lock()
            .map(|m| m.contains_key(instance_id))
            .unwrap_or(false)
    }

    /// Waits (at most `limit`) until no take-out is under way, so that a drover stopping
    /// does not leave a peer's host half taken out: once removed, a host drops out of
    /// Rancher's lists and no other drover could find it by its label.
    pub async fn wait_idle(&self, limit: Duration) {
        let end = Instant::now() + limit;
        loop {
            let busy = self.in_flight.lock().map(|m| m.len()).unwrap_or(0);
            if busy == 0 {
                return;
            }
            if Instant::now() >= end {
                tracing::warn!("stopping with {busy} take-out(s) still under way");
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The outcome of an instance's handling, once it has one.
    pub fn settled(&self, instance_id: &str) -> Option<Outcome> {
        self.settled.lock().ok()?.get(instance_id).copied()
    }

    fn read_record(&self, instance_id: &str) -> Option<TakeOutRecord> {
        match self.state.read_json(&record_file(instance_id)) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("{e}; starting this take-out afresh");
                None
            }
        }
    }

    fn save(&self, record: &TakeOutRecord) {
        if let Err(e) = self
            .state
            .write_json(&record_file(&record.instance_id), record)
        {
            // Losing the record costs only the resume after a crash; the work goes on.
            tracing::error!("cannot record take-out progress: {e}");
        }
    }

    /// The whole handling of one termination, start to end.
    pub async fn handle(&self, t: Termination) -> Outcome {
        let span = tracing::info_span!(
            "host",
            instance_id = %t.instance_id,
            host_id = tracing::field::Empty
        );
        let fut = self.handle_inner(t, span.clone());
        tracing::Instrument::instrument(fut, span).await
    }

    async fn handle_inner(&self, t: Termination, span: tracing::Span) -> Outcome {
        let own = t.instance_id == self.own_instance;
        let previous = self.read_record(&t.instance_id);
        if let Some(prev) = previous.as_ref().filter(|r| r.finished()) {
            tracing::info!(source = %t.source, "this instance was already taken out and its hook completed");
            if let Some(id) = &prev.host_id {
                span.record("host_id", id.as_str());
            }
            return Outcome::Done;
        }
        if !own && !self.config.lifecycle.handle_peers {
            tracing::info!(source = %t.source, "termination of another instance; lifecycle.handle_peers is off");
            return Outcome::NotHere;
        }
        let mut record = previous.clone().unwrap_or_else(|| TakeOutRecord {
            instance_id: t.instance_id.clone(),
            source: t.source.to_string(),
            started_at: now_rfc3339(),
            ..TakeOutRecord::default()
        });
        // A resumed take-out continues the timeline it had.
        let timeline = Timeline(Arc::new(Mutex::new(record.timeline.clone())));
        if record.group.is_none() {
            record.group = t
                .group
                .clone()
                .or_else(|| own.then(|| self.own_group.clone()).flatten());
        }
        if record.hook.is_none() {
            record.hook = t.hook.clone();
        }

        // Which host? A recorded id first: a removed host drops out of lists.
        let host_id = match record.host_id.clone() {
            Some(id) => Some(id),
            None => match self
                .cluster
                .find_host(
                    &t.instance_id,
                    Instant::now() + FIND_BUDGET.min(self.config.lifecycle.drain_timeout),
                )
                .await
            {
                Ok(h) => h.map(|h| h.id),
                Err(e) if !own => {
                    // Cannot tell whether the peer's host is here: let another host try.
                    tracing::warn!("cannot look the host up ({e}); handing the termination back");
                    return Outcome::NotHere;
                }
                Err(e) => {
                    timeline.push(format!("looking the host up failed: {e}"));
                    // The host may stay a ghost, but the hook is still ours to answer.
                    let hook = self.hook_target(&t, &record, &timeline).await;
                    return self
                        .finish_failed(&mut record, &timeline, "find host", &e.to_string(), &hook)
                        .await;
                }
            },
        };
        if host_id.is_none() && !own {
            tracing::info!(source = %t.source, "no host of this environment belongs to that instance; handing it back");
            return Outcome::NotHere;
        }
        if let Some(id) = &host_id {
            span.record("host_id", id.as_str());
        }
        // A queue message is only a claim: anyone who can send to the queue could forge one.
        // Act only when the group itself shows the instance terminating (or gone).
        if t.source == Source::Sqs && !record.taken_out {
            if let Some(refusal) = self
                .unconfirmed_termination(&t.instance_id, t.group.as_deref())
                .await
            {
                tracing::warn!("not acting on the termination message: {refusal}");
                return Outcome::NotCompleted;
            }
        }
        record.host_id = host_id.clone();
        timeline.push(format!(
            "termination of {} from {}{}",
            t.instance_id,
            t.source,
            if own { "" } else { " (a peer)" }
        ));

        // The lifecycle action to answer, and heartbeats while we work.
        let hook = self.hook_target(&t, &record, &timeline).await;
        let target = match &hook {
            HookLookup::Found(target) => Some(target.clone()),
            HookLookup::NoAction | HookLookup::Unknown(_) => None,
        };
        if let Some(target) = &target {
            record.group = Some(target.group.clone());
            record.hook = Some(target.hook.clone());
        }
        self.save(&record);
        let heartbeats = CancellationToken::new();
        let _stop_heartbeats = heartbeats.clone().drop_guard();
        if let (Some(asg), Some(target)) = (&self.asg, &target) {
            if !record.hook_completed {
                tokio::spawn(lifecycle::keep_alive(
                    asg.clone(),
                    target.clone(),
                    heartbeats.clone(),
                ));
            }
        }

        // Take the host out.
        let mut failure: Option<(String, String)> = None;
        if !record.taken_out {
            match &host_id {
                None => timeline.push("no host in Rancher for this instance; nothing to take out"),
                Some(id) => {
                    let mut deadline = Instant::now() + self.config.lifecycle.drain_timeout;
                    if let Some(hard) = t.deadline {
                        let left = hard
                            .duration_since(std::time::SystemTime::now())
                            .unwrap_or_default();
                        deadline = deadline.min(Instant::now() + left.max(Duration::from_secs(10)));
                    }
                    let plan = TakeOutPlan {
                        evacuate: self.config.lifecycle.evacuate && !t.urgent,
                    };
                    let progress_timeline = timeline.clone();
                    let progress = move |event: &str| progress_timeline.push(event.to_string());
                    match self.cluster.take_out(id, plan, deadline, &progress).await {
                        Ok(report) => {
                            timeline
                                .push(format!("host {id} out of Rancher ({})", report.final_state));
                            record.taken_out = true;
                        }
                        Err(e) => {
                            timeline.push(e.to_string());
                            failure = Some((e.step.clone(), e.error.clone()));
                        }
                    }
                }
            }
            if host_id.is_none() {
                record.taken_out = true;
            }
            record.timeline = timeline.entries();
            self.save(&record);
        }
        if own && record.taken_out && host_id.is_some() {
            self.stop_local_agent(&timeline).await;
        }

        if let Some((step, error)) = failure {
            return self
                .finish_failed(&mut record, &timeline, &step, &error, &hook)
                .await;
        }
        let outcome = self
            .answer_hook(&mut record, &timeline, &hook, LifecycleResult::Continue)
            .await;
        if outcome == Outcome::Done && record.paged {
            let summary = format!("drover: {} taken out and its hook completed", t.instance_id);
            if self
                .pager
                .resolve(&t.instance_id, &summary, Instant::now() + PAGE_BUDGET)
                .await
                .is_ok()
            {
                timeline.push("resolved the earlier incident");
                record.paged = false;
            }
        }
        record.timeline = timeline.entries();
        self.save(&record);
        outcome
    }

    /// Why the group does not confirm that `instance_id` is terminating, if it does not.
    /// `claimed_group` is the group the message names: it must be the instance's.
    async fn unconfirmed_termination(
        &self,
        instance_id: &str,
        claimed_group: Option<&str>,
    ) -> Option<String> {
        match self.membership(instance_id).await? {
            Ok(Some(m)) if claimed_group.is_some_and(|g| g != m.group) => Some(format!(
                "the message names group {}, but {instance_id} is in group {}",
                claimed_group.unwrap_or_default(),
                m.group
            )),
            Ok(Some(m)) if m.is_terminating() => None,
            Ok(Some(m)) => Some(format!(
                "group {} shows {instance_id} {}, not terminating",
                m.group,
                m.lifecycle_state.as_deref().unwrap_or("?")
            )),
            // In no group: a plain host, one detached, or an instance long gone. A message
            // cannot tell these apart from a forgery, and a host is never taken out on a
            // claim alone; the message goes to the dead-letter queue for a person to see.
            Ok(None) => Some(format!(
                "{instance_id} is in no Auto Scaling group, so nothing confirms it is terminating"
            )),
            Err(e) => Some(format!("cannot confirm it with Auto Scaling: {e}")),
        }
    }

    /// The instance's place in its group, transient failures retried within `FIND_BUDGET`;
    /// `None` without an Auto Scaling client.
    async fn membership(
        &self,
        instance_id: &str,
    ) -> Option<Result<Option<GroupMembership>, String>> {
        let asg = self.asg.as_ref()?;
        Some(
            crate::retry::until(
                "asking Auto Scaling about the instance",
                Instant::now() + FIND_BUDGET,
                Duration::from_secs(5),
                AutoScalingError::is_transient,
                || asg.membership(instance_id),
            )
            .await
            .map_err(|e| e.to_string()),
        )
    }

    async fn hook_target(
        &self,
        t: &Termination,
        record: &TakeOutRecord,
        timeline: &Timeline,
    ) -> HookLookup {
        let Some(asg) = self.asg.as_ref() else {
            return HookLookup::NoAction;
        };
        // Asked by hand or by a signal, the instance may not be terminating at all: then no
        // lifecycle action waits, and waiting for one would only hold drover up.
        if matches!(t.source, Source::Command | Source::Signal | Source::Spot) {
            match self.membership(&t.instance_id).await {
                Some(Ok(Some(m))) if !m.is_terminating() => {
                    timeline.push(format!(
                        "the instance is {} in group {}; no lifecycle action to complete",
                        m.lifecycle_state.as_deref().unwrap_or("?"),
                        m.group
                    ));
                    return HookLookup::NoAction;
                }
                Some(Ok(None)) => {
                    timeline.push(
                        "the instance is in no Auto Scaling group; no lifecycle action to complete",
                    );
                    return HookLookup::NoAction;
                }
                _ => {}
            }
        }
        let found = crate::retry::until(
            "finding the lifecycle hook",
            Instant::now() + FIND_BUDGET,
            Duration::from_secs(5),
            |e: &lifecycle::LifecycleError| {
                matches!(e, lifecycle::LifecycleError::AutoScaling(a) if a.is_transient())
            },
            || {
                lifecycle::resolve_target(
                    asg,
                    &t.instance_id,
                    record.group.as_deref(),
                    record.hook.as_deref(),
                    self.config.lifecycle.hook_name.as_deref(),
                )
            },
        )
        .await;
        match found {
            Ok(Some(target)) => HookLookup::Found(target),
            Ok(None) => {
                timeline.push("the instance is in no group with a termination hook; no lifecycle action to complete");
                HookLookup::NoAction
            }
            // Not knowing is not "nothing to do": the action may be waiting, so the message
            // must come back rather than be deleted.
            Err(e) => HookLookup::Unknown(format!("cannot tell the lifecycle hook: {e}")),
        }
    }

    async fn stop_local_agent(&self, timeline: &Timeline) {
        let docker = match AgentDocker::wait_ready(Instant::now() + Duration::from_secs(10)).await {
            Ok(d) => d,
            Err(e) => {
                timeline.push(format!("cannot stop rancher-agent: {e}"));
                return;
            }
        };
        match docker.stop_agent().await {
            Ok(true) => timeline.push("stopped the local rancher-agent container"),
            Ok(false) => {}
            Err(e) => timeline.push(format!("cannot stop rancher-agent: {e}")),
        }
    }

    /// Completes the lifecycle action with `result`; the outcome for the source.
    async fn answer_hook(
        &self,
        record: &mut TakeOutRecord,
        timeline: &Timeline,
        hook: &HookLookup,
        result: LifecycleResult,
    ) -> Outcome {
        let failed = result != LifecycleResult::Continue || !record.taken_out;
        let settled = if failed {
            Outcome::FailedButCompleted
        } else {
            Outcome::Done
        };
        if record.hook_completed {
            return settled;
        }
        let target = match hook {
            HookLookup::Found(target) => target,
            HookLookup::NoAction => {
                record.hook_completed = true;
                return settled;
            }
            HookLookup::Unknown(why) => {
                timeline.push(why.clone());
                self.page(record, timeline, "find the lifecycle action", why)
                    .await;
                return Outcome::NotCompleted;
            }
        };
        let Some(asg) = &self.asg else {
            record.hook_completed = true;
            return settled;
        };
        match lifecycle::complete(
            asg,
            target,
            result.as_str(),
            Instant::now() + COMPLETE_BUDGET,
        )
        .await
        {
            Ok(Completion::Completed) => {
                timeline.push(format!(
                    "completed lifecycle action {}/{} with {}",
                    target.group,
                    target.hook,
                    result.as_str()
                ));
                record.hook_completed = true;
                settled
            }
            Ok(Completion::AlreadyDone) => {
                timeline.push("lifecycle action was already completed");
                record.hook_completed = true;
                settled
            }
            Err(e) => {
                timeline.push(format!("completing the lifecycle action failed: {e}"));
                self.page(
                    record,
                    timeline,
                    "complete lifecycle action",
                    &e.to_string(),
                )
                .await;
                Outcome::NotCompleted
            }
        }
    }

    /// Taking the host out failed: page, then answer the hook with `on_failure`.
    async fn finish_failed(
        &self,
        record: &mut TakeOutRecord,
        timeline: &Timeline,
        step: &str,
        error: &str,
        hook: &HookLookup,
    ) -> Outcome {
        self.page(record, timeline, step, error).await;
        let outcome = self
            .answer_hook(record, timeline, hook, self.config.lifecycle.on_failure)
            .await;
        record.timeline = timeline.entries();
        self.save(record);
        outcome
    }

    async fn page(&self, record: &mut TakeOutRecord, timeline: &Timeline, step: &str, error: &str) {
        if !self.pager.is_configured() {
            tracing::error!(
                "{step} failed for {}: {error} (no pager configured)",
                record.instance_id
            );
            return;
        }
        let mut details = std::collections::BTreeMap::new();
        details.insert("source".to_string(), record.source.clone());
        details.insert(
            "rancher_url".to_string(),
            self.config.rancher.url.to_string(),
        );
        details.insert(
            "on_failure".to_string(),
            self.config.lifecycle.on_failure.as_str().to_string(),
        );
        let incident = Incident {
            instance_id: record.instance_id.clone(),
            host_id: record.host_id.clone(),
            group: record.group.clone(),
            hostname: None,
            failed_step: step.to_string(),
            error: error.to_string(),
            severity: Severity::Critical,
            timeline: timeline.entries(),
            details,
        };
        match self
            .pager
            .trigger(&incident, Instant::now() + PAGE_BUDGET)
            .await
        {
            Ok(()) => {
                timeline.push(format!("paged: {step} failed"));
                record.paged = true;
            }
            Err(e) => {
                tracing::error!(
                    "PAGING FAILED for {} ({step} failed): {e}",
                    record.instance_id
                );
                timeline.push(format!("paging failed: {e}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_files_are_safe_names() {
        assert_eq!(record_file("i-0abc"), "takeout-i-0abc.json");
        assert_eq!(record_file("../etc/x"), "takeout-___etc_x.json");
    }

    #[test]
    fn finished_needs_both_halves() {
        let mut r = TakeOutRecord::default();
        assert!(!r.finished());
        r.taken_out = true;
        assert!(!r.finished());
        r.hook_completed = true;
        assert!(r.finished());
    }
}
