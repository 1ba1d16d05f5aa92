//! SIGTERM and SIGINT, and telling a power-off from a reboot for `on_sigterm = "auto"`.

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

use crate::imds::Imds;

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
