//! The one consumer of work: every termination, from every source, enters here as a
//! [`Work`] value; the host is taken out of the cluster, the lifecycle action completed, and
//! someone paged when something really failed.
//!
//! The first termination of an instance starts the work; later ones for the same instance
//! (a duplicate delivery, the IMDS state noticed after the SQS message) join it and get the
//! same outcome. Work under way runs on the caller's [`TaskTracker`]; the consumer stops
//! taking work when `intake` is cancelled (buffered work is dropped, so its sources hand
//! their input back) and ends once the work under way has ended, or at once when `stop` is
//! cancelled (then the state dir's record says where a restart resumes).
//!
//! The workflow talks to traits only ([`Cluster`], [`LocalAgent`], [`LifecycleActions`],
//! [`Paging`]), so that its decisions are tested with fakes, in paused time.

mod hook;
mod launch;
mod page;
mod record;
mod take_out;
mod terminate;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{Cluster, LocalAgent};
use crate::lifecycle::{LaunchHook, LifecycleActions, LifecycleResult};
use crate::metrics::Metrics;
use crate::pager::Paging;
use crate::state::Records;
use crate::work::{LaunchOutcome, Outcome, Termination, Work};

pub use page::PAGE_BUDGET;
pub use terminate::{reapable_state, COMPLETE_BUDGET};

/// How many pieces of work may wait for the consumer before a source waits to send.
const QUEUE: usize = 64;

/// What the workflow needs to know, from the config and the instance.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This instance: its host's agent is stopped once out, and its termination needs no
    /// `handle_peers`.
    pub own_instance: String,
    /// The own group as the instance tags told it, which saves a Describe call.
    pub own_group: Option<String>,
    pub drain_timeout: Duration,
    pub on_failure: LifecycleResult,
    pub evacuate: bool,
    pub handle_peers: bool,
    /// `lifecycle.hook_name`.
    pub hook_name: Option<String>,
    /// `lifecycle.launch_hook_name`.
    pub launch_hook: LaunchHook,
    /// Where the cluster is (`rancher.url`), for pages.
    pub cluster_url: String,
}

/// Everything the work needs, built once by the command that runs it.
pub struct Workflow<C, L, A, P> {
    settings: Settings,
    cluster: C,
    lifecycle: L,
    agent: A,
    pager: P,
    records: Records,
    /// Where registrations and take-outs are counted; off unless [`Workflow::with_metrics`].
    metrics: Metrics,
}

impl<C, L, A, P> Workflow<C, L, A, P>
where
    C: Cluster,
    L: LifecycleActions,
    A: LocalAgent,
    P: Paging,
{
    pub fn new(
        settings: Settings,
        cluster: C,
        lifecycle: L,
        agent: A,
        pager: P,
        records: Records,
    ) -> Self {
        Workflow {
            settings,
            cluster,
            lifecycle,
            agent,
            pager,
            records,
            metrics: Metrics::off(),
        }
    }

    /// Counts registrations and take-outs in `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Starts the consumer on `tracker` and returns the one door into it. Start it before
    /// any source: work sent before is work lost.
    pub fn start(
        self,
        intake: CancellationToken,
        stop: CancellationToken,
        tracker: &TaskTracker,
    ) -> mpsc::Sender<Work> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let consumer = Consumer {
            own_instance: self.settings.own_instance.clone(),
            workflow: Arc::new(self),
            in_flight: HashMap::new(),
            settled: HashMap::new(),
            launching: None,
            done_tx,
            stop: stop.clone(),
            tracker: tracker.clone(),
        };
        tracker.spawn(consumer.run(rx, done_rx, intake, stop));
        tx
    }
}

/// Someone waiting for an instance's work to end.
enum Waiter {
    Terminate(oneshot::Sender<Outcome>),
    Stop(oneshot::Sender<Option<Outcome>>),
}

impl Waiter {
    /// A source that stopped waiting has nothing left to settle: a failed send is fine.
    fn send(self, outcome: Outcome) {
        match self {
            Waiter::Terminate(tx) => drop(tx.send(outcome)),
            Waiter::Stop(tx) => drop(tx.send(Some(outcome))),
        }
    }
}

/// What ended, as the consumer hears of it.
enum Ended {
    Terminate(String, Outcome),
    Launch,
}

/// The launch under way: the registration is cut short through `cancel` when this
/// instance's termination (or a stop) comes, and what came waits until it has ended, so that
/// nothing starts a container after the take-out stopped them.
struct Launching {
    cancel: CancellationToken,
    /// Terminations of this instance that arrived meanwhile, started once the launch ended.
    after: Vec<(Termination, Option<Waiter>)>,
    /// Stops that leave the host as it is, answered once the launch ended.
    stops: Vec<oneshot::Sender<Option<Outcome>>>,
}

/// The consumer's own state: only it reads and writes the tables, so they need no lock.
struct Consumer<C, L, A, P> {
    own_instance: String,
    workflow: Arc<Workflow<C, L, A, P>>,
    /// Work under way, by instance, with everyone waiting for it.
    in_flight: HashMap<String, Vec<Waiter>>,
    /// How each instance's handling ended, once it has.
    settled: HashMap<String, Outcome>,
    launching: Option<Launching>,
    done_tx: mpsc::UnboundedSender<Ended>,
    stop: CancellationToken,
    tracker: TaskTracker,
}

impl<C, L, A, P> Consumer<C, L, A, P>
where
    C: Cluster,
    L: LifecycleActions,
    A: LocalAgent,
    P: Paging,
{
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Work>,
        mut done_rx: mpsc::UnboundedReceiver<Ended>,
        intake: CancellationToken,
        stop: CancellationToken,
    ) {
        let mut open = true;
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                Some(ended) = done_rx.recv() => match ended {
                    Ended::Terminate(instance, outcome) => self.finished(instance, outcome),
                    Ended::Launch => self.launched(),
                },
                () = intake.cancelled(), if open => {
                    // Work that waited for the consumer is not started: dropping it tells
                    // its source to hand its input back.
                    rx.close();
                    let mut dropped = 0;
                    while rx.try_recv().is_ok() {
                        dropped += 1;
                    }
                    if dropped > 0 {
                        tracing::info!("stopping: {dropped} piece(s) of work not started");
                    }
                    open = false;
                }
                work = rx.recv(), if open => match work {
                    Some(work) => self.take(work),
                    None => open = false,
                },
            }
            if !open && self.in_flight.is_empty() && self.launching.is_none() {
                return;
            }
        }
    }

    fn take(&mut self, work: Work) {
        match work {
            Work::Launch {
                join,
                deadline,
                reply,
            } => self.launch(join, deadline, reply),
            Work::Terminate { termination, reply } => {
                self.start_or_join(termination, reply.map(Waiter::Terminate))
            }
            Work::Stop {
                take_out: Some(termination),
                reply,
            } => self.start_or_join(termination, Some(Waiter::Stop(reply))),
            Work::Stop {
                take_out: None,
                reply,
            } => {
                if let Some(launching) = &mut self.launching {
                    tracing::info!(
                        "stopping: cutting the registration short; Rancher is left as it is"
                    );
                    launching.cancel.cancel();
                    launching.stops.push(reply);
                } else if let Some(waiters) = self.in_flight.get_mut(&self.own_instance) {
                    tracing::info!("stopping: waiting for the take-out under way");
                    waiters.push(Waiter::Stop(reply));
                } else {
                    let _ = reply.send(self.settled.get(&self.own_instance).copied());
                }
            }
        }
    }

    fn launch(
        &mut self,
        join: Option<crate::work::Join>,
        deadline: tokio::time::Instant,
        reply: oneshot::Sender<LaunchOutcome>,
    ) {
        if self.launching.is_some() || self.in_flight.contains_key(&self.own_instance) {
            // A launch under way already, or this instance is being taken out.
            let _ = reply.send(LaunchOutcome::Interrupted);
            return;
        }
        let cancel = self.stop.child_token();
        self.launching = Some(Launching {
            cancel: cancel.clone(),
            after: Vec::new(),
            stops: Vec::new(),
        });
        let workflow = Arc::clone(&self.workflow);
        let done = self.done_tx.clone();
        self.tracker.spawn(async move {
            let outcome = workflow.launch(join, deadline, cancel).await;
            let _ = reply.send(outcome);
            let _ = done.send(Ended::Launch);
        });
    }

    fn launched(&mut self) {
        let Some(launching) = self.launching.take() else {
            return;
        };
        for reply in launching.stops {
            let _ = reply.send(self.settled.get(&self.own_instance).copied());
        }
        for (t, waiter) in launching.after {
            self.start_or_join(t, waiter);
        }
    }

    fn start_or_join(&mut self, t: Termination, waiter: Option<Waiter>) {
        if t.instance_id == self.own_instance {
            if let Some(launching) = &mut self.launching {
                tracing::info!(source = %t.source, "termination while registering: cutting the registration short");
                launching.cancel.cancel();
                launching.after.push((t, waiter));
                return;
            }
        }
        let settled = self.settled.get(&t.instance_id).copied();
        if let Some(outcome) = settled.filter(|o| o.settles_message()) {
            tracing::info!(instance_id = %t.instance_id, source = %t.source, "already handled; {outcome:?}");
            if let Some(w) = waiter {
                w.send(outcome);
            }
            return;
        }
        if let Some(waiters) = self.in_flight.get_mut(&t.instance_id) {
            tracing::info!(instance_id = %t.instance_id, source = %t.source, "joins the take-out already under way");
            waiters.extend(waiter);
            return;
        }
        let instance = t.instance_id.clone();
        self.in_flight
            .insert(instance.clone(), waiter.into_iter().collect());
        let workflow = Arc::clone(&self.workflow);
        let done = self.done_tx.clone();
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                outcome = workflow.terminate(t) => {
                    let _ = done.send(Ended::Terminate(instance, outcome));
                }
                // Cut short: the record says where a restart resumes.
                () = stop.cancelled() => {}
            }
        });
    }

    fn finished(&mut self, instance: String, outcome: Outcome) {
        for waiter in self.in_flight.remove(&instance).unwrap_or_default() {
            waiter.send(outcome);
        }
        self.settled.insert(instance, outcome);
    }
}
