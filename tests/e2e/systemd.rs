//! drover.service under a real systemd: the .deb installed into a copy of the scratch
//! Debian root, booted with `systemd-nspawn` ([`testbed::machine`]), drover run by its own
//! unit against the test bed. What the unit's comments argue is seen here: READY (and so
//! `multi-user.target`) only once Rancher shows the host active; the sandbox letting
//! drover reach the Docker socket and its state dir; `systemctl stop`, an upgrade of the
//! package (which restarts it) and a reboot leaving the host; a power-off taking it out
//! before `docker.service` stops. And `drover-oneshot.service`, in a root whose image has
//! the .rpm instead: a register that failed (no Docker yet) started again by systemd, its
//! stop step run after each failed start and leaving the host; an upgrade of the .rpm
//! restarting it and, once drover.service runs instead, a rollback restarting that one,
//! both leaving the host; and at power-off taking the host out before `docker.service`
//! stops.
//!
//! The bed's Docker engine runs outside the container. Inside, a `docker.service`
//! stand-in links its socket to `/run/docker.sock` (drover's default) when it starts, and
//! when it stops it first says so in `/srv/testbed` and waits (bounded) until the test has
//! looked at Rancher, the engine and drover's unit: the order at shutdown is observed at
//! the moment `docker.service`'s stop runs, not inferred from timestamps. Then it takes the
//! socket away, as a stopped engine would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use testbed::bed::{Bed, BedOptions};
use testbed::config::Secret;
use testbed::launch::{AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY};
use testbed::machine::{Boot, Machine};
use testbed::rancher::RancherOptions;

use crate::packaging::{debs, rpm_in, rpms, scratch_root};

/// Boot, registration, a stop: each well within this.
const LIMIT: Duration = Duration::from_secs(90);
/// How long the Rancher stand-in keeps a new host `registering`: the window in which
/// drover must still be starting.
const REGISTER_DELAY: Duration = Duration::from_secs(4);

/// Where the exchange with the `docker.service` stand-in happens, inside and out.
const EXCHANGE: &str = "srv/testbed";

/// The `docker.service` stand-in: links `/run/docker.sock` to `socket` (in the exchange
/// dir) when it starts; its stop waits for the test (see [`DOCKER_STOP`]).
fn docker_unit(socket: &str) -> String {
    format!(
        "\
[Unit]
Description=Docker stand-in: the test bed's engine on /run/docker.sock via {socket}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/ln -sfn /srv/testbed/{socket} /run/docker.sock
ExecStop=/bin/sh /srv/testbed/docker-stop.sh
TimeoutStopSec=90

[Install]
WantedBy=multi-user.target
"
    )
}

/// docker.service's stop: says it has begun, waits (at most 60 s) until the test has
/// looked, then takes the engine away.
const DOCKER_STOP: &str = "\
#!/bin/sh
touch /srv/testbed/docker-stopping
i=0
while [ ! -e /srv/testbed/docker-may-stop ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
rm -f /run/docker.sock
";

/// A command that must succeed (both streams in the panic when it does not).
fn run(cmd: &mut Command) {
    crate::packaging::run(cmd);
}

fn write(path: &Path, text: &str, mode: u32) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("a directory in the root");
    }
    std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    testbed::bed::set_mode(path, mode);
}

/// The package an image was baked with.
#[derive(Debug, Clone, Copy)]
enum Package {
    Deb,
    /// Installed with `--nodeps`: the scratch root is Debian, whose libc rpm's database
    /// does not know.
    Rpm,
}

/// A host's root as its image and its userdata leave it: the package installed
/// (drover.service enabled by it), the Docker stand-in enabled, and what the userdata
/// writes: the config, the secret, and the unit's environment file (`/etc/default/drover`
/// for the .deb, `/etc/sysconfig/drover` for the .rpm) with the bed's endpoints.
fn prepare_root(bed: &Bed, package: Package) -> tempfile::TempDir {
    let dir = scratch_root();
    let root = dir.path();
    let env_file = match package {
        Package::Deb => {
            run(Command::new("dpkg")
                .arg(format!("--root={}", root.display()))
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["--install"])
                .arg(&debs().deb));
            "etc/default/drover"
        }
        Package::Rpm => {
            run(Command::new("rpm")
                .arg(format!("--root={}", root.display()))
                .arg("--initdb"));
            rpm_in(root, &["-i", &rpms().rpm.display().to_string()]);
            "etc/sysconfig/drover"
        }
    };

    write(
        &root.join("etc/systemd/system/docker.service"),
        &docker_unit("docker.sock"),
        0o644,
    );
    std::os::unix::fs::symlink(
        "/etc/systemd/system/docker.service",
        root.join("etc/systemd/system/multi-user.target.wants/docker.service"),
    )
    .expect("enable docker.service");
    write(
        &root.join(EXCHANGE).join("docker-stop.sh"),
        DOCKER_STOP,
        0o755,
    );
    // The mount point of the engine's socket.
    write(&root.join(EXCHANGE).join("docker.sock"), "", 0o600);

    let mut config = bed.config.clone();
    config.rancher.secret_key = Some(Secret::File("/etc/drover/rancher.secret".into()));
    // The unit's StateDirectory, drover's default.
    config.state.dir = None;
    config
        .write(&root.join("etc/drover/drover.toml"))
        .expect("the config");
    write(
        &root.join("etc/drover/rancher.secret"),
        &format!("{}\n", testbed::bed::SECRET),
        0o600,
    );
    // The bed's endpoints, but Docker at drover's default socket.
    let mut endpoints = bed.endpoints();
    endpoints.docker_host = None;
    // Every other AWS endpoint nowhere: nothing leaves the machine.
    endpoints.aws = Some("http://127.0.0.1:9".into());
    let mut env = format!(
        "AWS_ACCESS_KEY_ID={AWS_ACCESS_KEY_ID}\nAWS_SECRET_ACCESS_KEY={AWS_SECRET_ACCESS_KEY}\n"
    );
    for (name, value) in endpoints.vars() {
        env.push_str(&format!("{name}={value}\n"));
    }
    write(&root.join(env_file), &env, 0o600);
    dir
}

/// Boots the root, the bed's engine socket bound where the Docker stand-in links it from.
async fn boot(bed: &Bed, root: &Path, name: &str, console: PathBuf) -> Machine {
    Machine::boot(Boot {
        root,
        name,
        binds: vec![(
            bed.docker.socket().to_path_buf(),
            format!("/{EXCHANGE}/docker.sock"),
        )],
        console,
    })
    .await
    .expect("the container boots")
}

/// The state of the one host of this instance in Rancher (removed and purged ones
/// included), if any.
fn host_state(bed: &Bed) -> Option<(String, String)> {
    let mine: Vec<_> = bed
        .rancher
        .hosts()
        .into_iter()
        .filter(|h| h.labels.get("aws.instance_id") == Some(&bed.instance_id))
        .collect();
    assert!(
        mine.len() <= 1,
        "more than one host of this instance: {mine:#?}"
    );
    mine.first().map(|h| (h.id.clone(), h.state.clone()))
}

/// What a failure message needs: drover's journal and the console.
fn evidence(machine: &Machine) -> String {
    format!(
        "--- drover.service journal\n{}\n--- docker.service journal\n{}\n--- console\n{}",
        machine.journal("drover.service"),
        machine.journal("docker.service"),
        machine.console_text()
    )
}

/// Polls until drover.service is active, checking at every look that it is not active
/// before Rancher shows the host active, and that multi-user.target waits for it. Returns
/// whether drover was seen still starting while the host was registering.
async fn wait_ready_after_registration(bed: &Bed, machine: &mut Machine) -> bool {
    let deadline = Instant::now() + LIMIT;
    let mut seen_waiting = false;
    loop {
        // Read in an order that makes each check sound while things move on between the
        // reads: the target before the unit (a target once active stays so), the unit
        // (both its states in one read) before Rancher (a host never goes back from
        // active). So "target active, unit still starting" and "unit active, host not"
        // are real violations, never an artefact of the reads' order.
        let target = machine.active_state("multi-user.target").await;
        let (unit, sub) = unit_states(machine, "drover.service").await;
        let host = host_state(bed);
        let host_active = host.as_ref().is_some_and(|(_, s)| s == "active");
        assert!(
            unit != "active" || host_active,
            "drover.service active while the host is {host:?}\n{}",
            evidence(machine)
        );
        // Starting (its start job under way, READY not yet sent), drover holds the target.
        let starting = unit == "activating" && sub == "start";
        assert!(
            !starting || target != "active",
            "multi-user.target active while drover.service is starting\n{}",
            evidence(machine)
        );
        if starting && host.as_ref().is_some_and(|(_, s)| s == "registering") {
            seen_waiting = true;
        }
        if unit == "active" {
            return seen_waiting;
        }
        // Not failed, nor waiting to be restarted after a failure.
        assert!(
            unit != "failed" && sub != "auto-restart" && machine.exited().is_none(),
            "drover.service {unit} ({sub})\n{}",
            evidence(machine)
        );
        assert!(
            Instant::now() < deadline,
            "drover.service not active within {LIMIT:?} (now {unit}, host {host:?})\n{}",
            evidence(machine)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The unit's `ActiveState` and `SubState`, read at one moment.
async fn unit_states(machine: &Machine, unit: &str) -> (String, String) {
    let out = machine
        .run(&[
            "systemctl",
            "show",
            "-p",
            "ActiveState",
            "-p",
            "SubState",
            unit,
        ])
        .await
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default();
    // `Key=value` lines, in systemd's order rather than the arguments'.
    let value = |key: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap_or_default()
            .to_string()
    };
    (value("ActiveState="), value("SubState="))
}

/// Waits (bounded) until the Docker stand-in's stop has begun; the test then looks, and
/// [`let_docker_stop`] lets it go on.
async fn wait_docker_stopping(root: &Path, machine: &mut Machine) {
    let marker = root.join(EXCHANGE).join("docker-stopping");
    let deadline = Instant::now() + LIMIT;
    while !marker.exists() {
        assert!(
            machine.exited().is_none(),
            "the container ended before docker.service stopped\n{}",
            evidence(machine)
        );
        assert!(
            Instant::now() < deadline,
            "docker.service's stop not begun within {LIMIT:?}\n{}",
            evidence(machine)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn let_docker_stop(root: &Path) {
    std::fs::write(root.join(EXCHANGE).join("docker-may-stop"), "").expect("the go-ahead");
}

fn reset_docker_exchange(root: &Path) {
    for marker in ["docker-stopping", "docker-may-stop"] {
        let _ = std::fs::remove_file(root.join(EXCHANGE).join(marker));
    }
}

async fn agent_running(bed: &Bed) -> bool {
    bed.docker
        .container("rancher-agent")
        .await
        .is_some_and(|c| c.running)
}

async fn systemctl(machine: &Machine, args: &[&str]) {
    let mut words = vec!["systemctl"];
    words.extend_from_slice(args);
    run_inside(machine, &words).await;
}

/// Runs a command in the container that must succeed (its stderr and the journals in the
/// panic when it does not).
async fn run_inside(machine: &Machine, words: &[&str]) {
    let out = machine
        .run(words)
        .await
        .expect("a command in the container");
    assert!(
        out.status.success(),
        "{words:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        evidence(machine)
    );
}

/// Powers the machine off and checks, at the moment `docker.service`'s stop begins, that
/// `unit` is stopped (with `Result=success`), the host of this instance (`host`) is out of
/// Rancher and the agent no longer runs; then that the power-off ends cleanly.
async fn power_off_takes_the_host_out_before_docker_stops(
    bed: &Bed,
    root: &Path,
    mut machine: Machine,
    unit: &str,
    host: &str,
) -> Machine {
    let evidence = |machine: &Machine| {
        format!(
            "--- {unit} journal\n{}\n--- docker.service journal\n{}\n--- console\n{}",
            machine.journal(unit),
            machine.journal("docker.service"),
            machine.console_text()
        )
    };
    reset_docker_exchange(root);
    systemctl(&machine, &["poweroff"]).await;
    wait_docker_stopping(root, &mut machine).await;
    let unit_then = machine.active_state(unit).await;
    let result_then = machine.unit_property(unit, "Result").await;
    let host_then = host_state(bed);
    let agent_then = agent_running(bed).await;
    let_docker_stop(root);
    let status = machine.wait_exit(LIMIT).await.expect("the power-off");
    assert_eq!(unit_then, "inactive", "{}", evidence(&machine));
    assert_eq!(result_then, "success", "{}", evidence(&machine));
    let (id, state) = host_then.expect("the host, removed or purged");
    assert_eq!(id, host);
    assert!(
        state == "removed" || state == "purged",
        "the host is {state} when docker.service stops\n{}",
        evidence(&machine)
    );
    assert!(
        !agent_then,
        "the agent still runs when docker.service stops\n{}",
        evidence(&machine)
    );
    assert!(
        status.success(),
        "the power-off ended with {status}\n{}",
        evidence(&machine)
    );
    machine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drover_service_under_systemd_is_ready_once_registered_leaves_on_stop_upgrade_and_reboot_and_goes_before_docker_at_power_off(
) {
    let bed = Bed::with(BedOptions {
        rancher: RancherOptions {
            register_delay: REGISTER_DELAY,
            ..BedOptions::default().rancher
        },
        ..BedOptions::default()
    })
    .await;
    let dir = prepare_root(&bed, Package::Deb);
    let root = dir.path();
    let name = format!("drover-test-{}", std::process::id());
    let console = bed.dir.path().join("console-1.log");

    // First boot: drover.service starts from the package's enablement, READY only once
    // the host is active in Rancher, and multi-user.target waits for it.
    let mut machine = boot(&bed, root, &name, console).await;
    let seen_waiting = wait_ready_after_registration(&bed, &mut machine).await;
    assert!(
        seen_waiting,
        "never saw drover.service starting while the host was registering\n{}",
        evidence(&machine)
    );
    let (host, state) = host_state(&bed).expect("the host");
    assert_eq!(state, "active");
    assert_eq!(
        machine.unit_property("drover.service", "Type").await,
        "notify"
    );
    // multi-user.target is reached once drover is (boot may still be finishing others).
    let deadline = Instant::now() + LIMIT;
    while machine.active_state("multi-user.target").await != "active" {
        assert!(Instant::now() < deadline, "{}", evidence(&machine));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The sandbox let drover reach the Docker socket (the agent runs, started through it)
    // and write its state dir (the registration record, in the unit's StateDirectory).
    assert!(agent_running(&bed).await, "{}", evidence(&machine));
    let record = root.join("var/lib/drover/registration.json");
    let text = std::fs::read_to_string(&record)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", record.display(), evidence(&machine)));
    assert!(text.contains(&host), "{text}");
    let state_dir = std::fs::metadata(root.join("var/lib/drover")).expect("the state dir");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&state_dir.permissions()) & 0o777,
        0o700
    );

    // `systemctl stop` on a machine that stays up: drover stops cleanly and the host stays.
    systemctl(&machine, &["stop", "drover.service"]).await;
    assert_eq!(machine.active_state("drover.service").await, "inactive");
    assert_eq!(
        machine.unit_property("drover.service", "Result").await,
        "success"
    );
    assert_eq!(host_state(&bed), Some((host.clone(), "active".into())));
    assert!(agent_running(&bed).await);
    // And back: the same host, READY at once.
    systemctl(&machine, &["start", "drover.service"]).await;
    assert_eq!(machine.active_state("drover.service").await, "active");
    assert_eq!(host_state(&bed), Some((host.clone(), "active".into())));

    // An upgrade under the running unit, with no terminal: dpkg asks nothing (the changed
    // template is an example, not a conffile), the package restarts drover on the new
    // binary, and the restart leaves the host as it was.
    let before = machine
        .unit_property("drover.service", "InvocationID")
        .await;
    std::fs::copy(
        &debs().deb_next,
        root.join(EXCHANGE).join("drover-next.deb"),
    )
    .expect("the next package into the root");
    run_inside(
        &machine,
        &[
            "env",
            "DEBIAN_FRONTEND=noninteractive",
            "dpkg",
            "--install",
            "/srv/testbed/drover-next.deb",
        ],
    )
    .await;
    let after = machine
        .unit_property("drover.service", "InvocationID")
        .await;
    assert_ne!(before, after, "the upgrade did not restart drover.service");
    assert_eq!(machine.active_state("drover.service").await, "active");
    assert_eq!(host_state(&bed), Some((host.clone(), "active".into())));
    assert!(agent_running(&bed).await);

    // A reboot: drover is stopped before docker.service and leaves the host.
    reset_docker_exchange(root);
    systemctl(&machine, &["reboot"]).await;
    wait_docker_stopping(root, &mut machine).await;
    let drover_then = machine.active_state("drover.service").await;
    let host_then = host_state(&bed);
    let_docker_stop(root);
    assert_eq!(drover_then, "inactive", "{}", evidence(&machine));
    assert_eq!(
        host_then,
        Some((host.clone(), "active".into())),
        "a reboot took the host out\n{}",
        evidence(&machine)
    );
    machine.wait_exit(LIMIT).await.expect("the reboot");
    // Every stop, `systemctl stop`, the upgrade's restart and the reboot's, decided to
    // leave the host.
    let journal = machine.journal("drover.service");
    assert_eq!(
        journal
            .matches("stopping; the host stays registered")
            .count(),
        3,
        "{journal}"
    );
    drop(machine);
    assert_eq!(host_state(&bed), Some((host.clone(), "active".into())));

    // Second boot: the same host, from the record in the state dir.
    let console = bed.dir.path().join("console-2.log");
    let mut machine = boot(&bed, root, &name, console).await;
    wait_ready_after_registration(&bed, &mut machine).await;
    assert_eq!(host_state(&bed), Some((host.clone(), "active".into())));

    // Power-off: drover takes the host out and stops the agent, all before docker.service's
    // stop begins.
    let machine = power_off_takes_the_host_out_before_docker_stops(
        &bed,
        root,
        machine,
        "drover.service",
        &host,
    )
    .await;
    let journal = machine.journal("drover.service");
    assert!(
        journal.contains("taking the host out before stopping (the system is powering off)"),
        "{journal}"
    );
}

/// For the one-shot unit, the Docker stand-in links the socket to a name that points
/// nowhere until the test makes it point at the engine: the first registrations find no
/// Docker.
const LATE_SOCKET: &str = "engine.sock";

/// A root as [`prepare_root`] leaves it, but with `drover-oneshot.service` enabled instead
/// of `drover.service` (as the unit's comment tells operators), a Docker engine that comes
/// late, and a restart delay of 1 s instead of the unit's 30 s (which would only slow the
/// test down: what is seen is that it restarts, and what runs between).
fn prepare_oneshot_root(bed: &Bed) -> tempfile::TempDir {
    let dir = prepare_root(bed, Package::Rpm);
    let root = dir.path();
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    std::fs::remove_file(wants.join("drover.service")).expect("drover.service was enabled");
    let unit = ["lib/systemd/system", "usr/lib/systemd/system"]
        .iter()
        .map(|d| Path::new("/").join(d).join("drover-oneshot.service"))
        .find(|p| root.join(p.strip_prefix("/").expect("absolute")).exists())
        .expect("the package installs drover-oneshot.service");
    std::os::unix::fs::symlink(&unit, wants.join("drover-oneshot.service"))
        .expect("enable drover-oneshot.service");
    write(
        &root.join("etc/systemd/system/drover-oneshot.service.d/restart-sooner.conf"),
        "[Service]\nRestartSec=1s\n",
        0o644,
    );
    write(
        &root.join("etc/systemd/system/docker.service"),
        &docker_unit(LATE_SOCKET),
        0o644,
    );
    dir
}

/// Upgrades (or, with `--oldpackage`, rolls back) the .rpm inside the running machine as an
/// operator would, with no terminal, and checks that `unit`, active before, was restarted
/// by the package's scriptlets (a new `InvocationID`) and that the restart left the host
/// as it was: the machine stays up.
async fn rpm_change_restarts(
    bed: &Bed,
    root: &Path,
    machine: &Machine,
    unit: &str,
    package: &Path,
    extra: &[&str],
    host: &str,
) {
    let before = machine.unit_property(unit, "InvocationID").await;
    assert_eq!(machine.active_state(unit).await, "active");
    std::fs::copy(package, root.join(EXCHANGE).join("drover-change.rpm"))
        .expect("the package into the root");
    let mut words = vec!["rpm", "-U", "--nodeps", "--nosignature"];
    words.extend_from_slice(extra);
    words.push("/srv/testbed/drover-change.rpm");
    run_inside(machine, &words).await;
    let after = machine.unit_property(unit, "InvocationID").await;
    assert_ne!(
        before,
        after,
        "{words:?} did not restart {unit}\n{}",
        machine.journal(unit)
    );
    assert_eq!(
        machine.active_state(unit).await,
        "active",
        "{}",
        machine.journal(unit)
    );
    assert_eq!(host_state(bed), Some((host.to_string(), "active".into())));
    assert!(agent_running(bed).await);
}

/// `NRestarts` of a unit, as systemd counts them.
async fn restarts(machine: &Machine, unit: &str) -> u32 {
    machine
        .unit_property(unit, "NRestarts")
        .await
        .parse()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oneshot_unit_under_systemd_restarts_a_failed_register_steps_down_after_it_restarts_on_rpm_upgrade_and_takes_the_host_out_at_power_off(
) {
    let mut bed = Bed::with(BedOptions::default()).await;
    // A register that finds no Docker gives up soon (and pages), as one whose budget is
    // spent would.
    bed.config.agent.register_timeout = Some(Duration::from_secs(10));
    bed.config.pager.routing_key = Some(Secret::Inline(testbed::bed::ROUTING_KEY.into()));
    let dir = prepare_oneshot_root(&bed);
    let root = dir.path();
    let name = format!("drover-oneshot-{}", std::process::id());
    let console = bed.dir.path().join("console-oneshot.log");
    let unit = "drover-oneshot.service";
    let mut machine = boot(&bed, root, &name, console).await;
    let seen = |machine: &Machine| {
        format!(
            "--- {unit} journal\n{}\n--- console\n{}",
            machine.journal(unit),
            machine.console_text()
        )
    };

    // No Docker: register fails, systemd starts it again, and after each failed start the
    // stop step has run and, the machine not going away, left everything as it was.
    let deadline = Instant::now() + LIMIT;
    while restarts(&machine, unit).await < 1 {
        assert!(
            Instant::now() < deadline,
            "{unit} not restarted within {LIMIT:?}\n{}",
            seen(&machine)
        );
        assert!(machine.exited().is_none(), "{}", seen(&machine));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let journal = machine.journal(unit);
    assert!(
        journal.contains("the machine is not going away"),
        "the stop step did not run after the failed start\n{}",
        seen(&machine)
    );
    assert!(
        !bed.pager.events().is_empty(),
        "the failed register paged nobody\n{}",
        seen(&machine)
    );
    assert!(
        host_state(&bed).is_none_or(|(_, state)| state != "active"),
        "a host active while Docker never came: {:?}",
        host_state(&bed)
    );

    // Docker comes: the next restart registers, and the unit stays active (RemainAfterExit).
    std::os::unix::fs::symlink(
        "/srv/testbed/docker.sock",
        root.join(EXCHANGE).join(LATE_SOCKET),
    )
    .expect("the engine's socket");
    let deadline = Instant::now() + LIMIT;
    loop {
        let (active, sub) = unit_states(&machine, unit).await;
        if active == "active" {
            assert_eq!(sub, "exited", "{}", seen(&machine));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{unit} not active within {LIMIT:?} of Docker coming (now {active}/{sub})\n{}",
            seen(&machine)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (host, state) = host_state(&bed).expect("the host");
    assert_eq!(state, "active", "{}", seen(&machine));
    assert!(agent_running(&bed).await, "{}", seen(&machine));
    assert!(restarts(&machine, unit).await >= 1);

    // This root's image has the .rpm: an upgrade restarts the one-shot unit (its stop step
    // leaves the host, the machine staying up; its start finds the host again).
    rpm_change_restarts(&bed, root, &machine, unit, &rpms().rpm_next, &[], &host).await;
    // drover.service, had the image enabled that one instead (the two conflict), is
    // restarted too: here by a rollback to the first release.
    systemctl(&machine, &["start", "drover.service"]).await;
    assert_eq!(machine.active_state(unit).await, "inactive");
    rpm_change_restarts(
        &bed,
        root,
        &machine,
        "drover.service",
        &rpms().rpm,
        &["--oldpackage"],
        &host,
    )
    .await;
    // Back to the one-shot unit, for the power-off.
    systemctl(&machine, &["start", unit]).await;
    assert_eq!(machine.active_state("drover.service").await, "inactive");
    assert_eq!(host_state(&bed), Some((host.clone(), "active".into())));

    // Power-off: the stop step takes the host out and stops the agent before
    // docker.service's stop begins.
    let machine =
        power_off_takes_the_host_out_before_docker_stops(&bed, root, machine, unit, &host).await;
    let journal = machine.journal(unit);
    assert!(
        journal.contains("taking the host out: the system is powering off"),
        "{journal}"
    );
}
