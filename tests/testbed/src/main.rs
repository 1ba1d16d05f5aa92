//! `drover-testbed demo`: runs the real drover binary against the whole test bed (its own
//! stand-ins, moto SQS, a private dockerd) and prints what happened, step by step.
//! `drover-testbed bench`: measures it there (see `testbed::bench`).
//! `drover-testbed faults`: the seeded fault-injection campaign (see `testbed::faults`);
//! `faults --boot`: its boot cases (see `testbed::faults_boot`); `faults --reap`: its reaper
//! cases (see `testbed::faults_reap`).

use std::path::PathBuf;
use std::time::Duration;

use testbed::bed::{direct_message, Bed, BedOptions, GROUP, HOOK};
use testbed::bench::{self, Settings};
use testbed::docker::DockerEngine;
use testbed::faults::Outcome;
use testbed::moto::MotoServer;
use testbed::rancher::RancherOptions;

const USAGE: &str = "usage: drover-testbed demo [--drover PATH]
       drover-testbed bench [--drover PATH] [--idle SECS] [--runs N] [--fleet N]
                            [--reaper-fleets N,N] [--reaper-interval SECS] [--reaper-window INTERVALS]
                            [--only footprint,reaction,boot,launch,fleet,reaper] [--out FILE.md]
       drover-testbed faults [--boot | --reap] [--drover PATH] [--seeds FIRST..END] [--jobs N] [--out FILE.md]
         (--boot: the boot cases, a launching instance registering while faults and a
          stop, a termination or a kill meet it; --reap: the reaper cases, a fleet of
          drover run peers sweeping for dead hosts among hosts to leave alone while
          Rancher and Auto Scaling fail; each with seeds of their own)";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("bench") {
        match bench_settings(&args[1..]) {
            Some(settings) => {
                if let Err(e) = bench(settings).await {
                    eprintln!("bench failed: {e}");
                    std::process::exit(1);
                }
                return;
            }
            None => {
                eprintln!("{USAGE}");
                std::process::exit(2);
            }
        }
    }
    if args.first().map(String::as_str) == Some("faults") {
        match faults(&args[1..]).await {
            Ok(true) => return,
            Ok(false) => std::process::exit(1),
            Err(e) => {
                eprintln!("{e}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    if args.first().map(String::as_str) != Some("demo") {
        eprintln!("{USAGE}");
        std::process::exit(2);
    }
    let mut drover = PathBuf::from("target/debug/drover");
    let mut rest = args.iter().skip(1);
    while let Some(arg) = rest.next() {
        match (arg.as_str(), rest.next()) {
            ("--drover", Some(path)) => drover = PathBuf::from(path),
            _ => {
                eprintln!("{USAGE}");
                std::process::exit(2);
            }
        }
    }
    // Ctrl-C or a TERM (scripts/demo.sh passes either on) drops the demo where it is: every
    // part of the bed stops and removes its folder as it is dropped.
    let outcome = tokio::select! {
        result = demo(drover) => result.map_err(|e| (format!("demo failed: {e}"), 1)),
        signal = stop_signal() => Err((format!("demo: {signal}, the test bed is stopped"), 130)),
    };
    if let Err((message, code)) = outcome {
        eprintln!("{message}");
        std::process::exit(code);
    }
}

/// The first SIGINT or SIGTERM, by name.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        // Without handlers the default action still stops the demo.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "interrupted",
        _ = term.recv() => "terminated",
    }
}

/// Runs the fault campaign; `Ok(false)` when an invariant broke.
async fn faults(args: &[String]) -> Result<bool, String> {
    let mut drover = PathBuf::from("target/debug/drover");
    let mut seeds = 0..200u64;
    let mut jobs = 6;
    let mut out = None;
    let mut boot = false;
    let mut reap = false;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        if arg == "--boot" {
            boot = true;
            continue;
        }
        if arg == "--reap" {
            reap = true;
            continue;
        }
        let value = rest.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--drover" => drover = PathBuf::from(value),
            "--seeds" => {
                let (a, b) = value
                    .split_once("..")
                    .ok_or("--seeds is FIRST..END, e.g. 0..2000")?;
                let first = a.parse().map_err(|_| "--seeds: FIRST is not a number")?;
                let end = b.parse().map_err(|_| "--seeds: END is not a number")?;
                seeds = first..end;
            }
            "--jobs" => jobs = value.parse().map_err(|_| "--jobs is a number")?,
            "--out" => out = Some(PathBuf::from(value)),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if boot && reap {
        return Err("--boot and --reap are two campaigns: one at a time".into());
    }
    let started = std::time::Instant::now();
    let campaign = std::sync::Arc::new(testbed::faults::Campaign::start(&drover).await?);
    let list: Vec<u64> = seeds.clone().collect();
    let range = format!("{seeds:?}");
    let (summary, clean) = if reap {
        let reap = std::sync::Arc::new(testbed::faults_reap::ReapCampaign::new(campaign));
        let reports = in_chunks(&list, started, |chunk| reap.run(chunk, jobs)).await;
        let clean = reports.iter().all(|r| r.violations.is_empty());
        (testbed::faults_reap::markdown(&reports, &range), clean)
    } else if boot {
        let boot = std::sync::Arc::new(testbed::faults_boot::BootCampaign::new(campaign));
        let reports = in_chunks(&list, started, |chunk| boot.run(chunk, jobs)).await;
        let clean = reports.iter().all(|r| r.violations.is_empty());
        (testbed::faults_boot::markdown(&reports, &range), clean)
    } else {
        let reports = in_chunks(&list, started, |chunk| campaign.run(chunk, jobs)).await;
        let clean = reports.iter().all(|r| r.violations.is_empty());
        (testbed::faults::markdown(&reports, &range), clean)
    };
    println!("\n{summary}");
    if let Some(out) = out {
        let text = format!(
            "Run by `drover-testbed faults` on {} with {jobs} cases at a time; took {:.0} s.\n\n{summary}",
            bench::machine(),
            started.elapsed().as_secs_f64()
        );
        std::fs::write(&out, text).map_err(|e| format!("{}: {e}", out.display()))?;
    }
    Ok(clean)
}

/// Runs the seeds in chunks, so that a long run shows progress, and prints each failing
/// case with its log.
async fn in_chunks<'a, R, F, Fut>(list: &'a [u64], started: std::time::Instant, run: F) -> Vec<R>
where
    R: Outcome,
    F: Fn(&'a [u64]) -> Fut,
    Fut: std::future::Future<Output = Vec<R>>,
{
    let mut reports = Vec::new();
    for chunk in list.chunks(50) {
        let done = run(chunk).await;
        let bad = done.iter().filter(|r| !r.violations().is_empty()).count();
        println!(
            "seeds {}..={}: {} cases, {bad} with violations ({:.0}s so far)",
            chunk[0],
            chunk[chunk.len() - 1],
            done.len(),
            started.elapsed().as_secs_f64()
        );
        for r in done.iter().filter(|r| !r.violations().is_empty()) {
            println!(
                "--- seed {} ({}):\n  {}\n{}",
                r.seed(),
                r.label(),
                r.violations().join("\n  "),
                r.log_tail()
            );
        }
        reports.extend(done);
    }
    reports
}

fn heading(text: &str) {
    println!("\n=== {text} ===");
}

async fn demo(drover: PathBuf) -> Result<(), String> {
    if !drover.exists() {
        return Err(format!(
            "{} not found; build it first (cargo build)",
            drover.display()
        ));
    }
    heading("starting the test bed");
    let mut bed = Bed::try_with(BedOptions {
        rancher: RancherOptions::default(),
        queue: true,
        drover: drover.clone(),
        ..BedOptions::default()
    })
    .await?;
    // drover's own default level: the walk-through shows what an operator would see.
    bed.config.log.level = None;
    let instance_id = bed.instance_id.clone();
    let queue = bed.queue().1.to_string();
    println!(
        "IMDSv2 stand-in      {}  (instance {instance_id}, group {GROUP})",
        bed.imds.url()
    );
    println!(
        "Rancher 1.x stand-in {}  (project {}, no registration token yet)",
        bed.rancher.url(),
        bed.rancher.project_id()
    );
    println!(
        "Auto Scaling stand-in {}  (group {GROUP}, hook {HOOK})",
        bed.asg.url()
    );
    println!("PagerDuty stand-in   {}", bed.pager.enqueue_url());
    println!("SQS (moto)           {queue}");
    println!(
        "Docker engine        {}  (stand-in rancher/agent:v1.2.11 imported)",
        bed.docker.docker_host()
    );
    println!(
        "\ndrover's config ({}):\n{}",
        bed.config_path().display(),
        bed.config.render()
    );
    println!("(agent.privileged = false: privileged containers cannot start on this machine)");

    heading("1. drover check");
    run(&bed, &["check"]).await?;

    heading("2. drover register (the boot step)");
    let before = bed.rancher.requests().len();
    let code = run(&bed, &["register"]).await?;
    if code != 0 {
        return Err(format!("drover register exited {code}"));
    }

    heading("3. what drover did, as the test bed saw it");
    println!("Rancher API requests:");
    for r in bed.rancher.requests().iter().skip(before) {
        let query = if r.query.is_empty() {
            String::new()
        } else {
            format!("?{}", r.query)
        };
        println!("  {:>6} {}{} -> {}", r.method, r.path, query, r.status);
    }
    for b in bed.rancher.bootstraps_seen() {
        println!(
            "bootstrap container {}:",
            &b.container_id[..b.container_id.len().min(12)]
        );
        println!("  image      {}", b.image);
        println!("  argument   {}", b.args.join(" "));
        for e in b.env.iter().filter(|e| e.starts_with("CATTLE_")) {
            println!("  env        {e}");
        }
        for bind in &b.binds {
            println!("  bind       {bind}");
        }
    }
    for h in bed.rancher.hosts() {
        println!(
            "host {} ({}): {}  labels {:?}",
            h.id,
            h.hostname,
            h.history.join(" -> "),
            h.labels
        );
    }
    let record = bed.state_dir().join("registration.json");
    println!(
        "{}:\n{}",
        record.display(),
        std::fs::read_to_string(&record).unwrap_or_else(|e| format!("  (not written: {e})"))
    );

    heading("4. drover register again: nothing changes");
    run(&bed, &["register"]).await?;
    println!(
        "bootstrap containers started in all: {}, hosts: {}",
        bed.rancher.bootstraps_seen().len(),
        bed.my_hosts().len()
    );

    heading("5. drover run: the resident daemon watches the queue and IMDS");
    bed.config.lifecycle.imds_poll = Some(Duration::from_secs(1));
    println!("(with lifecycle.imds_poll = \"1s\")");
    let mut daemon = bed.launcher(&["run"]).inherit_output().spawn()?;
    daemon.wait_ready(Duration::from_secs(60)).await?;
    println!("(drover told systemd READY=1)");

    heading("6. Auto Scaling scales in: a termination lifecycle message arrives");
    let token = bed
        .asg
        .begin_termination(&instance_id, Duration::from_secs(1))
        .ok_or("the instance is not in the group")?;
    let (moto, _) = bed.queue();
    moto.send(&queue, &direct_message(&instance_id, &token))
        .await;
    println!(
        "sent to {queue}: EC2_INSTANCE_TERMINATING for {instance_id} (group {GROUP}, hook {HOOK})"
    );
    let end = tokio::time::Instant::now() + Duration::from_secs(90);
    let completion = loop {
        if let Some(c) = bed
            .asg
            .completions()
            .into_iter()
            .find(|c| c.instance_id == instance_id)
        {
            break c;
        }
        if tokio::time::Instant::now() > end {
            return Err("the lifecycle action was not completed within 90 s".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    heading("7. the host's way out, as the test bed saw it");
    for r in bed
        .rancher
        .requests()
        .iter()
        .filter(|r| r.query.contains("action="))
    {
        println!(
            "  Rancher {:>4} {}?{} -> {}",
            r.method, r.path, r.query, r.status
        );
    }
    for h in bed.rancher.hosts() {
        println!("host {}: {}", h.id, h.history.join(" -> "));
    }
    println!(
        "CompleteLifecycleAction {}/{} {} for {} ({})",
        completion.group,
        completion.hook,
        completion.result,
        completion.instance_id,
        if completion.by_token {
            "by token"
        } else {
            "by instance id"
        }
    );
    println!("heartbeats sent: {}", bed.asg.heartbeats().len());
    let (visible, hidden) = moto.approximate_counts(&queue).await;
    println!("messages left in the queue: {}", visible + hidden);
    if let Some(agent) = bed.docker.container("rancher-agent").await {
        println!("local rancher-agent container: {}", agent.state);
    }

    heading("8. power-off: SIGTERM to drover run");
    daemon.signal(nix::sys::signal::Signal::SIGTERM)?;
    daemon.wait_stopping(Duration::from_secs(30)).await?;
    println!("(drover told systemd STOPPING=1)");
    let code = daemon
        .wait(Duration::from_secs(30))
        .await
        .map_err(|_| "drover run did not stop within 30 s".to_string())?;
    println!("(exit {})", code.unwrap_or(-1));
    heading("done; stopping the test bed");
    Ok(())
}

/// Runs drover to its end against the bed, its output shown as it comes.
async fn run(bed: &Bed, args: &[&str]) -> Result<i32, String> {
    println!("$ drover {}", args.join(" "));
    let run = bed
        .launcher(args)
        .inherit_output()
        .run(Duration::from_secs(120))
        .await?;
    let code = run.code.unwrap_or(-1);
    println!("(exit {code})");
    Ok(code)
}

fn bench_settings(args: &[String]) -> Option<Settings> {
    let mut settings = Settings {
        drover: PathBuf::from("target/release/drover"),
        idle: Duration::from_secs(60),
        runs: 20,
        fleet: 50,
        reaper_fleets: vec![10, 50],
        reaper_interval: Duration::from_secs(2),
        reaper_window: 40,
        out: None,
        only: Vec::new(),
    };
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let value = rest.next()?;
        match arg.as_str() {
            "--drover" => settings.drover = PathBuf::from(value),
            "--idle" => settings.idle = Duration::from_secs(value.parse().ok()?),
            "--runs" => settings.runs = value.parse().ok().filter(|n| *n > 0)?,
            "--fleet" => settings.fleet = value.parse().ok().filter(|n| *n >= 2)?,
            "--reaper-fleets" => {
                settings.reaper_fleets = value
                    .split(',')
                    .map(|n| n.parse().ok().filter(|n| *n >= 2))
                    .collect::<Option<Vec<usize>>>()?;
            }
            "--reaper-interval" => {
                settings.reaper_interval = Duration::from_secs_f64(
                    value
                        .parse()
                        .ok()
                        .filter(|s: &f64| *s >= 0.5 && *s <= 600.0)?,
                );
            }
            "--reaper-window" => {
                settings.reaper_window = value.parse().ok().filter(|n| *n >= 5)?;
            }
            "--out" => settings.out = Some(PathBuf::from(value)),
            "--only" => settings.only = value.split(',').map(str::to_string).collect(),
            _ => return None,
        }
    }
    Some(settings)
}

async fn bench(settings: Settings) -> Result<(), String> {
    if !settings.drover.exists() {
        return Err(format!(
            "{} not found; build it first (cargo build --release)",
            settings.drover.display()
        ));
    }
    let wanted = |s: &str| settings.only.is_empty() || settings.only.iter().any(|o| o == s);
    let moto = MotoServer::start()
        .await
        .map_err(|e| format!("moto_server: {e} (run scripts/testbed-setup.sh)"))?;
    let docker = DockerEngine::launch()
        .await
        .map_err(|e| format!("dockerd: {e} (run scripts/testbed-setup.sh)"))?;
    let started = std::time::Instant::now();
    let mut rows = Vec::new();
    if wanted("footprint") {
        rows.extend(bench::footprint::run(&settings, &docker, &moto).await?);
    }
    if wanted("reaction") {
        rows.extend(bench::reaction::run(&settings, &docker, &moto).await?);
    }
    if wanted("boot") {
        rows.extend(bench::boot::run(&settings, &docker).await?);
    }
    if wanted("launch") {
        rows.extend(bench::launch::run(&settings, &docker).await?);
    }
    if wanted("fleet") {
        rows.extend(bench::fleet::run(&settings, &docker, &moto).await?);
    }
    if wanted("reaper") {
        rows.extend(bench::reaper::run(&settings, &docker).await?);
    }
    let machine = bench::machine();
    println!("\n{}", bench::table(&rows));
    println!(
        "machine: {machine}; took {:.0}s",
        started.elapsed().as_secs_f64()
    );
    if let Some(out) = &settings.out {
        let date = std::process::Command::new("date")
            .args(["-u", "+%Y-%m-%d %H:%M UTC"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let text = format!(
            "# drover benchmark results\n\nMeasured by `scripts/bench.sh` on {date}.\n\n\
             - Machine: {machine}\n\
             - drover: `{}` ({} bytes)\n\
             - Idle window {}s; {} runs per reaction source; fleet of {}; reaper fleets of {:?} every {}s\n\n{}",
            settings.drover.display(),
            std::fs::metadata(&settings.drover)
                .map(|m| m.len())
                .unwrap_or(0),
            settings.idle.as_secs(),
            settings.runs,
            settings.fleet,
            settings.reaper_fleets,
            settings.reaper_interval.as_secs_f64(),
            bench::markdown(&rows)
        );
        std::fs::write(out, text).map_err(|e| format!("{}: {e}", out.display()))?;
        println!("wrote {}", out.display());
    }
    Ok(())
}
