//! A real systemd booted as PID 1 of a container (`systemd-nspawn --boot`) over a root
//! directory, for running drover's units as they run on a host: commands inside by
//! `nsenter`, its journal read from the root, every wait bounded, and the container
//! killed on drop, whatever the test did.
//!
//! The container shares this machine's network (no `--private-network`), so drover in it
//! reaches the stand-ins on 127.0.0.1. It is registered with no machine manager
//! (`--register=no --keep-unit`): these machines run no systemd or D-Bus of their own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::launch::Error;

/// How long boot may take until systemd (PID 1) is found.
const LEADER_LIMIT: Duration = Duration::from_secs(30);
/// One command run inside.
const COMMAND_LIMIT: Duration = Duration::from_secs(60);

/// A booted container. Dropping it kills every process in it (SIGKILL to its PID 1 ends
/// its PID namespace) and then `systemd-nspawn`.
pub struct Machine {
    root: PathBuf,
    name: String,
    nspawn: Child,
    /// systemd, PID 1 inside, as this machine numbers it.
    leader: u32,
    console: PathBuf,
    /// `systemd-nspawn`'s exit, once seen.
    exited: Option<ExitStatus>,
}

/// What to boot.
pub struct Boot<'a> {
    /// The root directory (a copy: the container writes into it).
    pub root: &'a Path,
    /// The machine's name, also its hostname.
    pub name: &'a str,
    /// `(outside, inside)` paths bind-mounted into the container, read-write.
    pub binds: Vec<(PathBuf, String)>,
    /// Where the console (systemd's boot and shutdown lines) goes.
    pub console: PathBuf,
}

impl Machine {
    /// Boots systemd in the container and returns once its PID 1 is running (not once
    /// boot is over: poll the units with [`Machine::active_state`]).
    pub async fn boot(boot: Boot<'_>) -> Result<Machine, Error> {
        let console = std::fs::File::create(&boot.console)
            .map_err(|e| Error::new(format!("{}: {e}", boot.console.display())))?;
        let console_err = console
            .try_clone()
            .map_err(|e| Error::new(format!("console: {e}")))?;
        let mut cmd = Command::new("systemd-nspawn");
        cmd.arg("--quiet")
            .arg("--directory")
            .arg(boot.root)
            .arg(format!("--machine={}", boot.name))
            // No machined and no D-Bus here: neither a registration nor a scope of its own.
            .args(["--register=no", "--keep-unit"])
            // systemd's own lines to our file; nothing read from us.
            .arg("--console=read-only");
        for (outside, inside) in &boot.binds {
            cmd.arg(format!("--bind={}:{inside}", outside.display()));
        }
        cmd.args(["--boot", "systemd.firstboot=off"])
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console_err);
        let nspawn = cmd.spawn().map_err(|e| {
            Error::new(format!(
                "systemd-nspawn (run scripts/testbed-setup.sh: systemd-container): {e}"
            ))
        })?;
        let mut machine = Machine {
            root: boot.root.to_path_buf(),
            name: boot.name.to_string(),
            nspawn,
            leader: 0,
            console: boot.console,
            exited: None,
        };
        let deadline = Instant::now() + LEADER_LIMIT;
        loop {
            if let Some(pid) = find_leader(machine.nspawn.id()) {
                machine.leader = pid;
                return Ok(machine);
            }
            if let Some(status) = machine.poll_exit() {
                return Err(Error::new(format!(
                    "systemd-nspawn exited with {status} while booting:\n{}",
                    machine.console_text()
                )));
            }
            if Instant::now() > deadline {
                return Err(Error::new(format!(
                    "no systemd in the container within {LEADER_LIMIT:?}:\n{}",
                    machine.console_text()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The container's root directory, as this machine sees it.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Runs `args` inside the container (all its namespaces), bounded; its output, whatever
    /// its exit.
    pub async fn run(&self, args: &[&str]) -> Result<Output, Error> {
        let what = args.join(" ");
        let child = tokio::process::Command::new("nsenter")
            .arg(format!("--target={}", self.leader))
            .args(["--mount", "--uts", "--ipc", "--net", "--pid", "--"])
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("SYSTEMD_PAGER", "")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        match tokio::time::timeout(COMMAND_LIMIT, child).await {
            Ok(out) => out.map_err(|e| Error::new(format!("nsenter {what}: {e}"))),
            Err(_) => Err(Error::new(format!(
                "`{what}` in {} took over {COMMAND_LIMIT:?}",
                self.name
            ))),
        }
    }

    /// `systemctl show -p <property> --value <unit>` inside; empty when it cannot tell
    /// (the manager going away at power-off).
    pub async fn unit_property(&self, unit: &str, property: &str) -> String {
        self.run(&["systemctl", "show", "-p", property, "--value", unit])
            .await
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_string())
            .unwrap_or_default()
    }

    /// The unit's `ActiveState` (`activating`, `active`, `deactivating`, `inactive`,
    /// `failed`).
    pub async fn active_state(&self, unit: &str) -> String {
        self.unit_property(unit, "ActiveState").await
    }

    /// Whether `systemd-nspawn` has ended; its exit status once it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.poll_exit()
    }

    /// Waits, bounded, for `systemd-nspawn` to end (after a power-off or reboot inside).
    pub async fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus, Error> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.poll_exit() {
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(Error::new(format!(
                    "the container did not end within {limit:?}:\n{}",
                    self.console_text()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.nspawn.try_wait().ok().flatten();
        }
        self.exited
    }

    /// What the console showed, the last 60 lines, for a failure's message.
    pub fn console_text(&self) -> String {
        let text = std::fs::read_to_string(&self.console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// The journal of `unit` (every boot), read from the root's persistent journal by this
    /// machine's journalctl, for a failure's message.
    pub fn journal(&self, unit: &str) -> String {
        let out = Command::new("journalctl")
            .arg(format!(
                "--directory={}",
                self.root.join("var/log/journal").display()
            ))
            .args(["--no-pager", "-o", "short-monotonic", "-u", unit])
            .output();
        match out {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(e) => format!("(journalctl: {e})"),
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.poll_exit().is_some() {
            return;
        }
        // PID 1 killed, the kernel kills the rest of its namespace; nspawn then exits.
        if self.leader > 1 {
            let _ = kill(Pid::from_raw(self.leader as i32), Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.poll_exit().is_none() {
            if Instant::now() > deadline {
                let _ = self.nspawn.kill();
                let _ = self.nspawn.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The child of `systemd-nspawn` (pid `nspawn`) that is PID 1 of its own PID namespace:
/// the container's systemd. (Its `/proc/PID/root` reads `/`: it cannot tell containers
/// apart.)
fn find_leader(nspawn: u32) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let parent = field("PPid:");
        let ids = field("NSpid:");
        if parent.first().map(String::as_str) == Some(&nspawn.to_string())
            && ids.len() == 2
            && ids[1] == "1"
        {
            return Some(pid);
        }
    }
    None
}
