//! The way in: this instance's launching lifecycle action around its registration. The
//! action is looked up first (group, hook), kept alive with heartbeats while the registration
//! runs when the hook's timeout is shorter than the registration may take, and answered by
//! what the registration did: `CONTINUE` once the host is active, `ABANDON` when it failed
//! (and a page), so that Auto Scaling never counts an instance that is not in the cluster.
//! An instance entering a warm pool is not registered; its action is answered `CONTINUE`.
//!
//! A success also settles the past: earlier take-out records of the instance no longer
//! speak for its host, an earlier boot failure's incident is resolved, and stale hosts of
//! the instance (not active, not the one registered) are taken out.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::hook::{self, Completion, HookLookup, HookTarget};
use super::page::PAGE_BUDGET;
use super::take_out::{self, Ending, Plan};
use super::terminate::FIND_BUDGET;
use super::Workflow;
use crate::cluster::{Cluster, LocalAgent};
use crate::lifecycle::{LaunchHook, LifecycleActions, LifecycleResult, Transition};
use crate::metrics::Event;
use crate::pager::{Incident, IncidentKind, Paging, Severity};
use crate::state::{now_rfc3339, BootFailure};
use crate::work::{Join, JoinFailed, Joined, LaunchOutcome};

/// Budget for answering the launching action once registration has ended: the group shows
/// `Pending:Wait` within seconds of the launch, long before any registration ends.
const ANSWER_BUDGET: Duration = Duration::from_secs(120);
/// Budget for taking out each stale host after a registration.
const STALE_BUDGET: Duration = Duration::from_secs(120);

impl<C, L, A, P> Workflow<C, L, A, P>
where
    C: Cluster,
    L: LifecycleActions,
    A: LocalAgent,
    P: Paging,
{
    /// The whole launch, in a span naming the instance.
    pub(super) async fn launch(
        &self,
        join: Option<Join>,
        deadline: Instant,
        cancel: CancellationToken,
    ) -> LaunchOutcome {
        let span = tracing::info_span!(
            "launch",
            instance_id = %self.settings.own_instance,
        );
        let started = Instant::now();
        let outcome = async {
            tokio::select! {
                outcome = self.launch_in(join, deadline) => outcome,
                () = cancel.cancelled() => {
                    tracing::info!("registration cut short");
                    LaunchOutcome::Interrupted
                }
            }
        }
        .instrument(span)
        .await;
        // Only a registration that ended counts: one cut short or never due says nothing.
        let registered = match &outcome {
            LaunchOutcome::Registered { .. } => Some(true),
            LaunchOutcome::Failed(_) => Some(false),
            LaunchOutcome::NotRegistered | LaunchOutcome::Interrupted => None,
        };
        if let Some(registered) = registered {
            self.metrics.record(Event::Registration {
                registered,
                took: started.elapsed(),
            });
        }
        outcome
    }

    async fn launch_in(&self, join: Option<Join>, deadline: Instant) -> LaunchOutcome {
        let lookup = self.launch_action(join.is_some()).await;
        let Some(join) = join else {
            // Entering a warm pool: nothing registers, and the action lets it in.
            if let HookLookup::Found(target) = &lookup {
                self.answer_launch(target, LifecycleResult::Continue).await;
            }
            return LaunchOutcome::NotRegistered;
        };
        let joined = match &lookup {
            HookLookup::Found(target) if target.heartbeat_timeout < left(deadline) => {
                tracing::info!(
                    hook = %target.hook,
                    "the launching hook's heartbeat timeout ({}) is shorter than the registration may take; sending heartbeats",
                    crate::retry::rounded(target.heartbeat_timeout)
                );
                tokio::select! {
                    joined = join.0 => joined,
                    () = hook::keep_alive(&self.lifecycle, target) => unreachable!("heartbeats never end"),
                }
            }
            _ => join.0.await,
        };
        match joined {
            Ok(joined) => self.joined(joined, lookup).await,
            Err(failed) => self.join_failed(failed, &lookup).await,
        }
    }

    /// The launching action waiting for this instance, if any. `registering`: the instance is
    /// to be registered (else it enters a warm pool).
    async fn launch_action(&self, registering: bool) -> HookLookup {
        let configured = match &self.settings.launch_hook {
            LaunchHook::Off => return HookLookup::NoAction,
            LaunchHook::FromGroup => None,
            LaunchHook::Named(name) => Some(name.as_str()),
        };
        let own = &self.settings.own_instance;
        let deadline = Instant::now() + FIND_BUDGET;
        let membership = match hook::membership(&self.lifecycle, own, deadline).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                tracing::debug!("the instance is in no Auto Scaling group; no launching action");
                return HookLookup::NoAction;
            }
            Err(e) => {
                let why = format!("cannot ask Auto Scaling about the launching action: {e}");
                tracing::warn!("{why}");
                return HookLookup::Unknown(why);
            }
        };
        let held = if registering {
            membership.is_launching()
        } else {
            membership.is_entering_warm_pool()
        };
        if !held {
            tracing::debug!(
                state = membership.lifecycle_state.as_deref().unwrap_or("?"),
                "no launching action waits for this instance"
            );
            return HookLookup::NoAction;
        }
        let lookup = hook::look_up(
            &self.lifecycle,
            Transition::Launching,
            own,
            Some(&membership.group),
            None,
            configured,
            deadline,
        )
        .await;
        match &lookup {
            HookLookup::Found(t) => tracing::info!(
                group = %t.group,
                hook = %t.hook,
                state = membership.lifecycle_state.as_deref().unwrap_or("?"),
                "a launching action waits for this instance"
            ),
            HookLookup::NoAction => {
                tracing::debug!("the group has no launching hook");
            }
            HookLookup::Unknown(why) => tracing::warn!("{why}"),
        }
        lookup
    }

    /// Answers the launching action; a failure is paged (the hook's default result, usually
    /// `ABANDON`, would otherwise replace a healthy instance without a word).
    async fn answer_launch(&self, target: &HookTarget, result: LifecycleResult) -> bool {
        let deadline = Instant::now() + ANSWER_BUDGET;
        match hook::complete(&self.lifecycle, target, result, deadline).await {
            Ok(Completion::Completed) => {
                tracing::info!(
                    "completed launching action {}/{} with {}",
                    target.group,
                    target.hook,
                    result.as_str()
                );
                true
            }
            Ok(Completion::AlreadyDone) => {
                tracing::info!("the launching action was already answered");
                true
            }
            Err(e) => {
                let error = format!(
                    "completing the launching action with {} failed: {e}",
                    result.as_str()
                );
                tracing::error!("{error}");
                self.page_boot("complete launching action", &error, Some(target))
                    .await;
                false
            }
        }
    }

    async fn joined(&self, joined: Joined, lookup: HookLookup) -> LaunchOutcome {
        let own = &self.settings.own_instance;
        let lookup = match lookup {
            // Auto Scaling could not tell at the start: ask once more, now that it matters.
            HookLookup::Unknown(_) => self.launch_action(true).await,
            known => known,
        };
        let answered = match &lookup {
            HookLookup::Found(target) => {
                self.answer_launch(target, LifecycleResult::Continue).await
            }
            HookLookup::NoAction => true,
            HookLookup::Unknown(why) => {
                self.page_boot("find the launching action", why, None).await;
                false
            }
        };
        // The take-out records of this instance speak for hosts it had before: this host is
        // new, and its take-out starts afresh.
        self.records.clear(own);
        if answered {
            // Kept while the incident cannot be resolved: the next success tries again.
            if let Some(failure) = self.records.boot_failure() {
                if !failure.paged || self.resolve_boot().await {
                    self.records.clear_boot_failure();
                }
            }
        }
        for stale in &joined.stale {
            self.take_out_stale(stale).await;
        }
        LaunchOutcome::Registered {
            host_id: joined.host_id,
        }
    }

    async fn join_failed(&self, failed: JoinFailed, lookup: &HookLookup) -> LaunchOutcome {
        let text = format!("{} failed: {}", failed.step, failed.error);
        tracing::error!("registration failed at {}: {}", failed.step, failed.error);
        let target = match lookup {
            HookLookup::Found(target) => Some(target),
            _ => None,
        };
        // Paged first: the page says what the answer will be, and the answer may take a
        // while when Auto Scaling is slow.
        self.page_boot(&failed.step, &failed.error, target).await;
        if let Some(target) = target {
            self.answer_launch(target, LifecycleResult::Abandon).await;
        }
        LaunchOutcome::Failed(text)
    }

    /// Takes out a host of this instance that the registration did not make: not active,
    /// not the one registered. Its agent is not this host's running one, so it stays.
    async fn take_out_stale(&self, host_id: &str) {
        tracing::info!(
            stale_host = host_id,
            "taking out a stale host of this instance"
        );
        let plan = Plan {
            evacuate: false,
            stop_agent: false,
        };
        let deadline = Instant::now() + STALE_BUDGET;
        let report = take_out::take_out(&self.cluster, &self.agent, host_id, plan, deadline).await;
        match report.ending {
            Ending::Out { state } => {
                tracing::info!(stale_host = host_id, "stale host out of Rancher ({state})")
            }
            Ending::Failed { step, state, error } => {
                let error = format!("stale host {host_id} ({state}): {error}");
                tracing::error!("taking out a stale host failed at {step}: {error}");
                self.page_boot(&format!("take out stale host ({step})"), &error, None)
                    .await;
            }
        }
    }

    /// Pages that registering this instance failed at `step`: once per run of failures (a
    /// drover that systemd restarts over and over raises one incident), resolved by the next
    /// registration that succeeds.
    async fn page_boot(&self, step: &str, error: &str, action: Option<&HookTarget>) {
        let own = &self.settings.own_instance;
        let earlier = self.records.boot_failure();
        if let Some(earlier) = earlier.as_ref().filter(|f| f.paged) {
            tracing::warn!(
                "registration failed again at {step}: {error}; the incident opened at {} stays open",
                earlier.since
            );
            return;
        }
        let mut failure = BootFailure {
            instance_id: own.clone(),
            failed_step: step.to_string(),
            error: error.to_string(),
            since: earlier.map(|f| f.since).unwrap_or_else(now_rfc3339),
            paged: false,
        };
        if !self.pager.is_configured() {
            tracing::error!("registering {own} failed at {step}: {error} (no pager configured)");
            self.records.save_boot_failure(&failure);
            return;
        }
        let answer = match action {
            Some(t) => format!(
                "ABANDON for {}/{} (Auto Scaling replaces the instance)",
                t.group, t.hook
            ),
            None => "none waiting".to_string(),
        };
        let details = BTreeMap::from([
            ("source".to_string(), "boot".to_string()),
            ("rancher_url".to_string(), self.settings.cluster_url.clone()),
            ("launching_action".to_string(), answer),
        ]);
        let incident = Incident {
            kind: IncidentKind::Boot,
            instance_id: own.clone(),
            host_id: None,
            group: action
                .map(|t| t.group.clone())
                .or_else(|| self.settings.own_group.clone()),
            hostname: None,
            failed_step: step.to_string(),
            error: error.to_string(),
            severity: Severity::Critical,
            timeline: vec![(
                failure.since.clone(),
                format!("registration failed at {step}: {error}"),
            )],
            details,
        };
        match self
            .pager
            .trigger(&incident, Instant::now() + PAGE_BUDGET)
            .await
        {
            Ok(()) => failure.paged = true,
            Err(e) => {
                tracing::error!("PAGING FAILED for {own} (registration failed at {step}): {e}")
            }
        }
        self.records.save_boot_failure(&failure);
    }

    async fn resolve_boot(&self) -> bool {
        let own = &self.settings.own_instance;
        let summary = format!("drover: {own} registered with Rancher");
        match self
            .pager
            .resolve(
                IncidentKind::Boot,
                own,
                &summary,
                Instant::now() + PAGE_BUDGET,
            )
            .await
        {
            Ok(()) => {
                tracing::info!("resolved the incident of the earlier failed registration");
                true
            }
            Err(e) => {
                tracing::warn!("cannot resolve the earlier registration's incident: {e}");
                false
            }
        }
    }
}

fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}
