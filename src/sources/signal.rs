//! The signal source: SIGTERM and SIGINT, and the decision what a stop means for the host
//! (`lifecycle.on_sigterm`; for `"auto"`, telling a power-off from a reboot). The decision
//! goes into the workflow as [`Work::Stop`]; a second signal stops at once.

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::OnSigterm;
use crate::imds::Imds;
use crate::work::{Source, Termination, Work};

/// Waits for SIGTERM or SIGINT and names it.
pub struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn install() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    pub async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// What systemd is doing, from its job queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    PowerOff,
    Halt,
    Reboot,
}

/// Reads `systemctl list-jobs`: a queued `poweroff.target`/`halt.target` means the machine
/// goes away; `reboot.target`/`kexec.target` means it comes back.
pub fn parse_jobs(listing: &str) -> Option<Shutdown> {
    let units: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    let has = |names: &[&str]| units.iter().any(|u| names.contains(u));
    if has(&["reboot.target", "kexec.target", "soft-reboot.target"]) {
        Some(Shutdown::Reboot)
    } else if has(&["halt.target"]) {
        Some(Shutdown::Halt)
    } else if has(&["poweroff.target"]) {
        Some(Shutdown::PowerOff)
    } else {
        None
    }
}

async fn systemd_shutdown() -> Option<Shutdown> {
    let run = tokio::process::Command::new("systemctl")
        .args(["list-jobs", "--no-legend", "--no-pager"])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(3), run)
        .await
        .ok()?
        .ok()?;
    parse_jobs(&String::from_utf8_lossy(&out.stdout))
}

/// Why the machine is going away, if it is: the decision behind `on_sigterm = "auto"`.
pub async fn machine_going_away(imds: &Imds) -> Option<String> {
    // Long enough to ride out a few IMDS 500s with backoff: a wrong "no" here leaves a
    // ghost behind, and the unit's stop timeout allows far more.
    let budget = Duration::from_secs(10);
    match imds.target_lifecycle_state_within(budget).await {
        Ok(Some(state)) if state == "Terminated" => {
            return Some("target lifecycle state is Terminated".into())
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot read the target lifecycle state at stop: {e}"),
    }
    match imds.spot_action(budget).await {
        Ok(Some(action)) => return Some(format!("Spot interruption pending ({})", action.action)),
        Ok(None) => {}
        Err(e) => tracing::warn!("cannot read the Spot notice at stop: {e}"),
    }
    match systemd_shutdown().await {
        Some(Shutdown::PowerOff) => Some("the system is powering off".into()),
        Some(Shutdown::Halt) => Some("the system is halting".into()),
        Some(Shutdown::Reboot) | None => None,
    }
}

/// What a stop means here.
#[derive(Debug, Clone)]
pub struct Policy {
    pub on_sigterm: OnSigterm,
    pub own_instance: String,
    /// How long a take-out at stop may take; systemd is asked for that much time.
    pub budget: Duration,
}

/// Why this stop takes the host out, if it does.
pub async fn decide(policy: &Policy, imds: &Imds) -> Option<String> {
    match policy.on_sigterm {
        OnSigterm::Exit => None,
        OnSigterm::Deregister => Some("lifecycle.on_sigterm is \"deregister\"".to_string()),
        OnSigterm::Auto => machine_going_away(imds).await,
    }
}

/// Waits for the first signal, sends the stop decision into the workflow and waits for what
/// it leads to, then cancels `intake` (no new work: the command winds down). A second
/// signal at any point cancels `stop`: everything ends at once, and a restart resumes an
/// unfinished take-out from its record.
pub async fn watch(
    mut signals: StopSignals,
    policy: Policy,
    imds: Imds,
    tx: mpsc::Sender<Work>,
    intake: CancellationToken,
    stop: CancellationToken,
) {
    let name = tokio::select! {
        name = signals.next() => name,
        // Stopped from elsewhere (the command ended on its own).
        () = intake.cancelled() => return,
    };
    let decision = decide(&policy, &imds).await;
    crate::systemd::stopping();
    let take_out = match &decision {
        None => None,
        Some(why) => {
            tracing::info!("{name}: taking the host out before stopping ({why})");
            crate::systemd::status("taking the host out");
            crate::systemd::extend_timeout(policy.budget);
            Some(Termination::new(&policy.own_instance, Source::Signal))
        }
    };
    let (work, reply) = Work::stop(take_out);
    if tx.send(work).await.is_ok() {
        tokio::select! {
            outcome = reply => match (outcome, &decision) {
                (Ok(None) | Err(_), None) => tracing::info!("{name}: stopping; the host stays registered"),
                (Ok(Some(o)), None) if o.settles_message() => {
                    tracing::info!("{name}: stopping; this host's termination was handled already")
                }
                (Ok(Some(o)), None) => tracing::info!("{name}: stopping; the take-out under way ended: {o:?}"),
                (Ok(o), Some(_)) => tracing::info!("take-out ended: {:?}", o.unwrap_or(crate::work::Outcome::NotCompleted)),
                (Err(_), Some(_)) => tracing::warn!("take-out ended without an outcome"),
            },
            second = signals.next() => {
                tracing::warn!("{second} again: stopping now; a restart resumes the take-out");
                stop.cancel();
                return;
            }
        }
    }
    intake.cancel();
    tokio::select! {
        second = signals.next() => {
            tracing::warn!("{second} again: stopping now");
            stop.cancel();
        }
        () = stop.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poweroff_halt_and_reboot_are_told_apart() {
        let poweroff = "1 poweroff.target start waiting\n2 shutdown.target start waiting\n";
        assert_eq!(parse_jobs(poweroff), Some(Shutdown::PowerOff));
        let halt = "3 halt.target start waiting\n";
        assert_eq!(parse_jobs(halt), Some(Shutdown::Halt));
        let reboot = "4 reboot.target start waiting\n5 shutdown.target start waiting\n";
        assert_eq!(parse_jobs(reboot), Some(Shutdown::Reboot));
        assert_eq!(parse_jobs(""), None);
        assert_eq!(parse_jobs("6 docker.service stop running\n"), None);
    }
}
