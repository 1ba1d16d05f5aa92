//! The handling of one termination, start to end: which host, whether to act at all, the
//! lifecycle action to answer, the take-out, the answer, the page. Every decision of the
//! workflow's table is made here, over the traits only.

use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use super::hook::{self, Completion, HookLookup, HookTarget};
use super::page;
use super::record::Timeline;
use super::take_out::{self, Ending, Plan};
use super::Workflow;
use crate::cluster::{Cluster, LocalAgent};
use crate::lifecycle::{
    GroupMembership, LifecycleActions, LifecycleResult, Transition, WARMED_TERMINATING_WAIT,
};
use crate::metrics::Event;
use crate::pager::Paging;
use crate::state::{now_rfc3339, TakeOutRecord};
use crate::work::{Outcome, Source, Termination};

/// Budget for completing the lifecycle action once the take-out has ended. The group may
/// lag `Terminating:Wait` by a while; heartbeats keep the action alive meanwhile.
pub const COMPLETE_BUDGET: Duration = Duration::from_secs(300);
/// Budget for finding a host, and for each Auto Scaling lookup, before anything else.
pub const FIND_BUDGET: Duration = Duration::from_secs(60);
/// A Spot interruption's own deadline still leaves the take-out this long.
const MIN_TAKE_OUT: Duration = Duration::from_secs(10);

/// Why a termination was not acted on, with the outcome for its source.
struct Refusal(Outcome);

/// The Auto Scaling states in which a disconnected host is the ghost of its instance: the
/// instance is on its way out. `Terminating:Proceed` is not among them: someone answered
/// its action, so a drover is (or was) at work on it; the next sweep finds it gone.
pub fn reapable_state(state: Option<&str>) -> bool {
    matches!(state, Some("Terminating" | "Terminating:Wait"))
}

impl<C, L, A, P> Workflow<C, L, A, P>
where
    C: Cluster,
    L: LifecycleActions,
    A: LocalAgent,
    P: Paging,
{
    /// The whole handling of one termination, in a span naming the instance and its host.
    pub(super) async fn terminate(&self, t: Termination) -> Outcome {
        let span = tracing::info_span!(
            "host",
            instance_id = %t.instance_id,
            host_id = tracing::field::Empty
        );
        self.terminate_in(t, span.clone()).instrument(span).await
    }

    async fn terminate_in(&self, t: Termination, span: tracing::Span) -> Outcome {
        let own = t.instance_id == self.settings.own_instance;
        let reaping = t.source == Source::Reaper;
        if reaping && own {
            // The sweep never sends it: this instance answers for itself.
            tracing::warn!("a reaper never takes out its own instance's host");
            return Outcome::NotHere;
        }
        let mut previous = self.records.read(&t.instance_id);
        if let Some(prev) = previous.as_ref().filter(|r| r.finished()) {
            if self.has_new_host(prev, t.hosts.as_deref()).await {
                tracing::info!(source = %t.source, "the instance was taken out before, but has a new host since: taking it out");
                previous = None;
            } else {
                tracing::info!(source = %t.source, "this instance was already taken out and its hook completed");
                if let Some(id) = &prev.host_id {
                    span.record("host_id", id.as_str());
                }
                return Outcome::Done;
            }
        }
        // The reaper has a switch of its own (`reaper.enabled`).
        if !own && !reaping && !self.settings.handle_peers {
            tracing::info!(source = %t.source, "termination of another instance; lifecycle.handle_peers is off");
            return Outcome::NotHere;
        }
        let mut record = previous.unwrap_or_else(|| TakeOutRecord {
            instance_id: t.instance_id.clone(),
            source: t.source.to_string(),
            started_at: now_rfc3339(),
            ..TakeOutRecord::default()
        });
        // A resumed take-out continues the timeline it had.
        let mut timeline = Timeline::from_record(&record);
        if record.group.is_none() {
            record.group = t
                .group
                .clone()
                .or_else(|| own.then(|| self.settings.own_group.clone()).flatten());
        }
        if record.hook.is_none() {
            record.hook = t.hook.clone();
        }

        let started = Instant::now();
        let hosts = match self.which_hosts(&t, own, &mut record, &mut timeline).await {
            Ok(hosts) => hosts,
            Err(Refusal(outcome)) => {
                // Not a peer's handed back: this instance's take-out, failed at the lookup.
                if outcome != Outcome::NotHere {
                    self.count_take_out(&t, outcome, started);
                }
                return outcome;
            }
        };
        let host_id = hosts.first().cloned();
        if let Some(id) = &host_id {
            span.record("host_id", id.as_str());
        }
        // What Auto Scaling confirmed about the instance, when the decision needed it.
        let mut confirmed: Option<Option<GroupMembership>> = None;
        if !own && hosts.is_empty() && !record.taken_out {
            // No host of this environment: only a warmed instance of this drover's own
            // group, terminated from the pool, is answered here (no one else can).
            match self.warmed_termination(&t).await {
                Ok(m) => {
                    timeline.push(format!(
                        "{} waits in group {}'s warm pool as {WARMED_TERMINATING_WAIT} and has no host here",
                        t.instance_id, m.group
                    ));
                    confirmed = Some(Some(m));
                }
                Err(why) => {
                    tracing::info!(source = %t.source, "no host of this environment belongs to that instance ({why}); handing it back");
                    return Outcome::NotHere;
                }
            }
        } else if reaping && !record.taken_out {
            match self.confirm_reap(&t).await {
                Ok(m) => confirmed = Some(m),
                Err(Refusal(outcome)) => return outcome,
            }
        } else if t.source == Source::Sqs && !record.taken_out {
            if let Some(refusal) = hook::unconfirmed_termination(
                &self.lifecycle,
                &t.instance_id,
                t.group.as_deref(),
                Instant::now() + FIND_BUDGET,
            )
            .await
            {
                tracing::warn!("not acting on the termination message: {refusal}");
                return Outcome::NotCompleted;
            }
        }
        record.host_id = host_id.clone();
        record.other_hosts = hosts.iter().skip(1).cloned().collect();
        timeline.push(format!(
            "termination of {} from {}{}",
            t.instance_id,
            t.source,
            if own { "" } else { " (a peer)" }
        ));

        let lookup = self
            .lifecycle_action(&t, &record, &mut timeline, confirmed.as_ref())
            .await;
        if let HookLookup::Found(target) = &lookup {
            record.group = Some(target.group.clone());
            record.hook = Some(target.hook.clone());
        }
        self.records.save(&record);
        let answered = record.hook_completed;
        let work = self.take_out_and_answer(&t, own, hosts, &mut record, &mut timeline, &lookup);
        let outcome = match (&lookup, answered) {
            // Heartbeats for as long as the work goes on; dropped with it.
            (HookLookup::Found(target), false) => {
                tokio::select! {
                    outcome = work => outcome,
                    () = hook::keep_alive(&self.lifecycle, target) => unreachable!("heartbeats never end"),
                }
            }
            _ => work.await,
        };
        self.count_take_out(&t, outcome, started);
        if outcome == Outcome::Done {
            // A failure was paged already, with its timeline; a success is told only to a
            // webhook that asked to hear of every take-out (`pager.webhook_events`).
            page::report(&self.pager, &record).await;
        }
        outcome
    }

    fn count_take_out(&self, t: &Termination, outcome: Outcome, started: Instant) {
        self.metrics.record(Event::TakeOut {
            source: t.source,
            outcome,
            took: started.elapsed(),
        });
    }

    /// A reaper's claim, checked with Auto Scaling itself just before acting: the instance
    /// is no longer known to it (its termination is over) or shows `Terminating` /
    /// `Terminating:Wait`. The membership, for the lifecycle action; a refusal otherwise,
    /// and when Auto Scaling cannot be asked (never read as "gone").
    async fn confirm_reap(&self, t: &Termination) -> Result<Option<GroupMembership>, Refusal> {
        let deadline = Instant::now() + FIND_BUDGET;
        match hook::membership(&self.lifecycle, &t.instance_id, deadline).await {
            Ok(None) => {
                tracing::info!("Auto Scaling no longer knows the instance: reaping its host");
                Ok(None)
            }
            Ok(Some(m)) if reapable_state(m.lifecycle_state.as_deref()) => {
                tracing::info!(
                    group = %m.group,
                    state = m.lifecycle_state.as_deref().unwrap_or("?"),
                    "Auto Scaling shows the instance terminating: reaping its host"
                );
                Ok(Some(m))
            }
            Ok(Some(m)) => {
                tracing::warn!(
                    group = %m.group,
                    state = m.lifecycle_state.as_deref().unwrap_or("?"),
                    "Auto Scaling shows the instance alive: not reaping its host"
                );
                Err(Refusal(Outcome::NotHere))
            }
            Err(e) => {
                tracing::warn!("cannot confirm with Auto Scaling that the instance is gone ({e}); doing nothing");
                Err(Refusal(Outcome::NotCompleted))
            }
        }
    }

    /// The instance waits in this drover's own group's warm pool as
    /// `Warmed:Terminating:Wait`, as Auto Scaling itself says; why not otherwise.
    async fn warmed_termination(&self, t: &Termination) -> Result<GroupMembership, String> {
        let deadline = Instant::now() + FIND_BUDGET;
        let own_group = match &self.settings.own_group {
            Some(g) => g.clone(),
            None => match hook::membership(&self.lifecycle, &self.settings.own_instance, deadline)
                .await
            {
                Ok(Some(m)) => m.group,
                Ok(None) => return Err("this instance is in no Auto Scaling group".into()),
                Err(e) => return Err(format!("cannot tell this instance's group: {e}")),
            },
        };
        if let Some(claimed) = t.group.as_deref().filter(|g| *g != own_group) {
            return Err(format!(
                "it is of group {claimed}, and only group {own_group}'s warm pool is answered here"
            ));
        }
        match hook::membership(&self.lifecycle, &t.instance_id, deadline).await {
            Ok(Some(m))
                if m.group == own_group
                    && m.lifecycle_state.as_deref() == Some(WARMED_TERMINATING_WAIT) =>
            {
                Ok(m)
            }
            Ok(Some(m)) => Err(format!(
                "Auto Scaling shows it {} in group {}",
                m.lifecycle_state.as_deref().unwrap_or("?"),
                m.group
            )),
            Ok(None) => Err("it is in no Auto Scaling group".into()),
            Err(e) => Err(format!("cannot ask Auto Scaling about it: {e}")),
        }
    }

    /// Whether the cluster shows a host of this finished record's instance that the record
    /// did not take out: the instance came back (EC2 stop and start, a warm pool's reuse)
    /// and registered again. Not knowing is "no": the record stands.
    async fn has_new_host(&self, record: &TakeOutRecord, known: Option<&[String]>) -> bool {
        let is_new = |id: &str| {
            record.host_id.as_deref() != Some(id) && !record.other_hosts.iter().any(|o| o == id)
        };
        // The source's own listing tells it already.
        if let Some(known) = known {
            return known.iter().any(|id| is_new(id));
        }
        let deadline = Instant::now() + FIND_BUDGET.min(self.settings.drain_timeout);
        match self.cluster.find_hosts(&record.instance_id, deadline).await {
            Ok(hosts) => hosts.iter().any(|h| is_new(&h.id)),
            Err(e) => {
                tracing::warn!("cannot look for a newer host of a taken-out instance ({e}); trusting the record");
                false
            }
        }
    }

    /// The hosts to take out: the recorded ones first (a removed host drops out of lists),
    /// else the ones the source found, else every host labelled with the instance id,
    /// active ones first. Empty: the instance has no host here.
    async fn which_hosts(
        &self,
        t: &Termination,
        own: bool,
        record: &mut TakeOutRecord,
        timeline: &mut Timeline,
    ) -> Result<Vec<String>, Refusal> {
        if let Some(id) = record.host_id.clone() {
            let mut hosts = vec![id];
            hosts.extend(record.other_hosts.iter().cloned());
            return Ok(hosts);
        }
        if let Some(known) = &t.hosts {
            return Ok(known.clone());
        }
        let deadline = Instant::now() + FIND_BUDGET.min(self.settings.drain_timeout);
        match self.cluster.find_hosts(&t.instance_id, deadline).await {
            Ok(hosts) => Ok(hosts.into_iter().map(|h| h.id).collect()),
            Err(e) if !own => {
                // Cannot tell whether the peer's host is here: let another host try.
                tracing::warn!("cannot look the host up ({e}); handing the termination back");
                Err(Refusal(Outcome::NotHere))
            }
            Err(e) => {
                timeline.push(format!("looking the host up failed: {e}"));
                // The host may stay a ghost, but the hook is still ours to answer.
                let lookup = self.lifecycle_action(t, record, timeline, None).await;
                let outcome = self
                    .finish_failed(record, timeline, "find host", &e.to_string(), &lookup)
                    .await;
                Err(Refusal(outcome))
            }
        }
    }

    /// The lifecycle action to answer. Asked by hand, by a signal or by a Spot notice, the
    /// instance may not be terminating at all: then no action waits, and waiting for one
    /// would only hold drover up.
    ///
    /// `confirmed` is what Auto Scaling said of the instance a moment ago, when a decision
    /// needed it (a reaper's, a warmed instance's): asked once, not again.
    async fn lifecycle_action(
        &self,
        t: &Termination,
        record: &TakeOutRecord,
        timeline: &mut Timeline,
        confirmed: Option<&Option<GroupMembership>>,
    ) -> HookLookup {
        let mut group = record.group.as_deref();
        match confirmed {
            Some(None) => {
                timeline.push(
                    "Auto Scaling no longer knows the instance; no lifecycle action to complete",
                );
                return HookLookup::NoAction;
            }
            Some(Some(m)) => group = Some(m.group.as_str()),
            None => {}
        }
        if confirmed.is_none()
            && matches!(t.source, Source::Command | Source::Signal | Source::Spot)
        {
            let deadline = Instant::now() + FIND_BUDGET;
            match hook::membership(&self.lifecycle, &t.instance_id, deadline).await {
                // A scale-in that returns the instance to its warm pool, noticed as a stop:
                // the termination hook holds it in Warmed:Pending:Wait.
                Ok(Some(m)) if !m.is_terminating() && !m.is_entering_warm_pool() => {
                    timeline.push(format!(
                        "the instance is {} in group {}; no lifecycle action to complete",
                        m.lifecycle_state.as_deref().unwrap_or("?"),
                        m.group
                    ));
                    return HookLookup::NoAction;
                }
                Ok(None) => {
                    timeline.push(
                        "the instance is in no Auto Scaling group; no lifecycle action to complete",
                    );
                    return HookLookup::NoAction;
                }
                _ => {}
            }
        }
        let lookup = hook::look_up(
            &self.lifecycle,
            Transition::Terminating,
            &t.instance_id,
            group,
            record.hook.as_deref(),
            self.settings.hook_name.as_deref(),
            Instant::now() + FIND_BUDGET,
        )
        .await;
        if lookup == HookLookup::NoAction {
            timeline.push("the instance is in no group with a termination hook; no lifecycle action to complete");
        }
        lookup
    }

    /// Takes the hosts out (what is not done yet), then answers the lifecycle action.
    async fn take_out_and_answer(
        &self,
        t: &Termination,
        own: bool,
        hosts: Vec<String>,
        record: &mut TakeOutRecord,
        timeline: &mut Timeline,
        lookup: &HookLookup,
    ) -> Outcome {
        let mut failure: Option<(String, String)> = None;
        if hosts.is_empty() {
            if !record.taken_out {
                timeline.push("no host in Rancher for this instance; nothing to take out");
                if own {
                    self.stop_agent_and_look_again(t, record, timeline, &mut failure)
                        .await;
                }
            }
            if failure.is_none() {
                record.taken_out = true;
            }
        } else if !record.taken_out {
            let plan = Plan {
                evacuate: self.settings.evacuate && !t.urgent,
                stop_agent: own,
            };
            failure = self.take_out_all(t, &hosts, plan, timeline).await;
            record.taken_out = failure.is_none();
        } else if own {
            // Out already (a resumed take-out): only the agent may still be running.
            if let Some(agent) = take_out::stop_agent(&self.agent).await {
                timeline.push(agent);
            }
        }
        record.timeline = timeline.entries().to_vec();
        self.records.save(record);

        if let Some((step, error)) = failure {
            return self
                .finish_failed(record, timeline, &step, &error, lookup)
                .await;
        }
        let outcome = self
            .answer(record, timeline, lookup, LifecycleResult::Continue)
            .await;
        if outcome == Outcome::Done && record.paged {
            page::resolve(&self.pager, record, timeline).await;
        }
        record.timeline = timeline.entries().to_vec();
        self.records.save(record);
        outcome
    }

    /// Takes every host out, in order, each within the take-out's deadline; the first
    /// failure as (step, error). The local agent is stopped once the last one is out.
    async fn take_out_all(
        &self,
        t: &Termination,
        hosts: &[String],
        plan: Plan,
        timeline: &mut Timeline,
    ) -> Option<(String, String)> {
        let deadline = self.deadline(t);
        let mut failure = None;
        for (n, id) in hosts.iter().enumerate() {
            let last = n + 1 == hosts.len();
            let plan = Plan {
                stop_agent: plan.stop_agent && last && failure.is_none(),
                ..plan
            };
            let report = take_out::take_out(&self.cluster, &self.agent, id, plan, deadline).await;
            for said in &report.events {
                timeline.push_at(said.at, said.text.clone());
            }
            match &report.ending {
                Ending::Out { state } => {
                    timeline.push(format!("host {id} out of Rancher ({state})"));
                }
                Ending::Failed { step, state, error } => {
                    timeline.push(format!(
                        "taking host {id} out failed at {step} (host {state}): {error}"
                    ));
                    failure.get_or_insert((step.to_string(), error.clone()));
                }
            }
            if let Some(agent) = report.agent {
                timeline.push(agent);
            }
        }
        failure
    }

    /// This instance had no host yet (a termination while registering): its agent
    /// containers are stopped, and then the cluster is asked once more, because a bootstrap
    /// that was under way may have registered a host meanwhile.
    async fn stop_agent_and_look_again(
        &self,
        t: &Termination,
        record: &mut TakeOutRecord,
        timeline: &mut Timeline,
        failure: &mut Option<(String, String)>,
    ) {
        if let Some(agent) = take_out::stop_agent(&self.agent).await {
            timeline.push(agent);
        }
        let deadline = Instant::now() + FIND_BUDGET.min(self.settings.drain_timeout);
        let late = match self.cluster.find_hosts(&t.instance_id, deadline).await {
            Ok(hosts) => hosts,
            Err(e) => {
                timeline.push(format!(
                    "looking for a host registered meanwhile failed: {e}"
                ));
                return;
            }
        };
        if late.is_empty() {
            return;
        }
        let ids: Vec<String> = late.into_iter().map(|h| h.id).collect();
        timeline.push(format!("a host registered meanwhile: {}", ids.join(", ")));
        record.host_id = ids.first().cloned();
        record.other_hosts = ids.iter().skip(1).cloned().collect();
        self.records.save(record);
        let plan = Plan {
            evacuate: false,
            stop_agent: true,
        };
        *failure = self.take_out_all(t, &ids, plan, timeline).await;
    }

    /// The take-out's deadline: `drain_timeout`, or sooner when the source has a hard end
    /// (a Spot interruption), but never less than a few seconds.
    fn deadline(&self, t: &Termination) -> Instant {
        let mut deadline = Instant::now() + self.settings.drain_timeout;
        if let Some(hard) = t.deadline {
            let left = hard
                .duration_since(std::time::SystemTime::now())
                .unwrap_or_default();
            deadline = deadline.min(Instant::now() + left.max(MIN_TAKE_OUT));
        }
        deadline
    }

    /// Completes the lifecycle action with `result`; the outcome for the source.
    async fn answer(
        &self,
        record: &mut TakeOutRecord,
        timeline: &mut Timeline,
        lookup: &HookLookup,
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
        let target: &HookTarget = match lookup {
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
        let deadline = Instant::now() + COMPLETE_BUDGET;
        match hook::complete(&self.lifecycle, target, result, deadline).await {
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
        timeline: &mut Timeline,
        step: &str,
        error: &str,
        lookup: &HookLookup,
    ) -> Outcome {
        self.page(record, timeline, step, error).await;
        let outcome = self
            .answer(record, timeline, lookup, self.settings.on_failure)
            .await;
        record.timeline = timeline.entries().to_vec();
        self.records.save(record);
        outcome
    }

    async fn page(
        &self,
        record: &mut TakeOutRecord,
        timeline: &mut Timeline,
        step: &str,
        error: &str,
    ) {
        page::page(&self.pager, &self.settings, record, timeline, step, error).await;
    }
}
