//! Command-line arguments, parsed and checked only; nothing here does I/O.
//!
//! `packaging/assets` includes this file to generate the man page and shell completions, so
//! it uses nothing from the crate but clap.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Joins an EC2 container host to a Rancher 1.x environment at boot and takes it out
/// cleanly when Auto Scaling terminates the instance.
#[derive(Debug, Parser)]
#[command(name = "drover", version)]
pub struct Cli {
    /// Config file (TOML). Default: /etc/drover/drover.toml, which may be absent when every
    /// required key comes from DROVER_<SECTION>_<KEY> variables.
    #[arg(long, global = true, env = "DROVER_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Set one config key, beating the environment and the file; repeatable.
    /// Example: --set rancher.url=https://rancher.example.com
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// One-shot boot step: read IMDS, get a registration URL, start rancher/agent, wait until
    /// the host is active, record it. Changes nothing on a registered host; skips warm pools.
    Register,
    /// One-shot: take this host out of Rancher (evacuate if configured, waiting until its
    /// containers are gone; deactivate, remove, purge), stop the local agent, complete the
    /// lifecycle action, page on failure.
    Deregister {
        /// Only when the machine is going away: its target lifecycle state is Terminated, a
        /// Spot interruption is pending, or systemd is powering off or halting (not
        /// rebooting). Otherwise exit 0 and leave the host registered. For ExecStop= and ExecStopPost= lines.
        #[arg(long)]
        if_going_away: bool,
    },
    /// The resident daemon: register, notify systemd, watch every termination source, take
    /// the host out on the first one, stay up until SIGTERM.
    Run,
    /// Check the config and every dependency it names; one line per check.
    ///
    /// Each line is ok, FAIL, skip or warn, with the check's name and what it found. A warn
    /// line never changes the exit code; the config's warnings are: an http:// URL to
    /// anything but loopback for rancher.url, pager.pagerduty_url or pager.webhook_url (the
    /// keys and the webhook's URL would cross the network in the clear);
    /// lifecycle.handle_peers = false with a lifecycle.queue_url (peers' messages on the
    /// shared queue are handed back, count toward its redrive, and a dead peer's termination
    /// waits out its hook); a secret file (*_file, or a config file holding a secret) that
    /// group or others may read or write, or that belongs to neither root nor drover's user.
    /// Exit 0 when no check failed, 1 when one did.
    Check,
    /// One reaper sweep of the environment, now: take out the hosts whose instance died.
    ///
    /// A host is taken out when Rancher shows its agent disconnected and Auto Scaling no
    /// longer knows its instance or shows it Terminating or Terminating:Wait (whose lifecycle
    /// action is then completed with CONTINUE); the termination action of every warmed
    /// instance of this group waiting in Warmed:Terminating:Wait with no host is completed
    /// too. Prints one line per host and warmed instance considered: what was done, the
    /// agent's state and Auto Scaling's answer. The same sweep drover run makes on its own
    /// ([reaper]), for a cron job; it runs whatever reaper.enabled says. Exit 1 when a
    /// take-out failed or the sweep was refused (Auto Scaling cannot see this instance, or
    /// could not be asked).
    Reap {
        /// Decide and print what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// What drover knows about this host, now; reads only, changes nothing anywhere.
    ///
    /// One block per part: the instance (IMDS identity and target lifecycle state), the
    /// registration record of the state dir, the host as Rancher shows it now (every host
    /// labelled aws.instance_id with this instance), the rancher-agent container (Docker),
    /// the termination sources drover run watches (from the config), the last take-out of
    /// this instance with its timeline, a failed boot if one is recorded, and the last
    /// reaper sweep. Each remote read is bounded (IMDS 4s, Rancher 6s, Docker 4s, read at
    /// once), so a status answers within seconds whatever hangs: a part that cannot be read
    /// says unreachable and why, and the others go on. Exit 1 ("cannot tell") only when IMDS
    /// gives no identity (then nothing can be tied to this host) or a record in the state
    /// dir cannot be read; Rancher or Docker unreachable still exits 0.
    Status {
        /// One JSON object instead, stable to script against: its "schema" field (1) is
        /// raised only when a field changes meaning or goes. Every field is listed under
        /// JSON FIELDS.
        #[arg(long)]
        json: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
