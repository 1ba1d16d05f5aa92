//! `drover-testbed bench`: measures the built drover against the test bed and prints a
//! table (footprint, reaction time, boot overhead, the launching hook's answer, AWS calls
//! while idle, a fleet simulation, the fleet with the reaper on), writing the same as
//! Markdown with the machine and the date.
//!
//! Nothing here asserts on time: these are measurements, compared with the targets in the
//! report. The shared machine is noisy; ratios within one run are what to read.

pub mod boot;
pub mod fleet;
pub mod footprint;
pub mod launch;
pub mod reaction;
pub mod reaper;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::autoscaling::AutoScalingServer;
use crate::bed::{add_active_host, add_group, GROUP, HOOK_TIMEOUT};
use crate::config::{DroverConfig, LogFormat, OnSigterm, Secret};
use crate::docker::DockerEngine;
use crate::imds::{ImdsOptions, ImdsServer};
use crate::launch::{Endpoints, Launcher, Running};
use crate::moto::MotoServer;
use crate::rancher::{RancherOptions, RancherServer};

pub use crate::launch::tail;

/// What the harness was asked to do.
#[derive(Debug, Clone)]
pub struct Settings {
    pub drover: PathBuf,
    pub idle: Duration,
    pub runs: usize,
    pub fleet: usize,
    /// The reaper fleet's sizes, one run each (`reaper`).
    pub reaper_fleets: Vec<usize>,
    /// `reaper.interval` in the reaper fleet.
    pub reaper_interval: Duration,
    /// How many intervals the reaper fleet's listings are counted for, after its warm-up.
    pub reaper_window: u32,
    pub out: Option<PathBuf>,
    /// Only these sections (footprint, reaction, boot, launch, fleet, reaper); empty: all.
    pub only: Vec<String>,
}

/// One drover's files: config, secret, state dir, its output.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub instance_id: String,
    /// The Rancher secret key from this SSM parameter, not from a file.
    pub ssm_secret: Option<String>,
}

impl Node {
    pub fn new(instance_id: &str) -> std::io::Result<Node> {
        let dir = tempfile::Builder::new().prefix("drover-bench-").tempdir()?;
        Ok(Node {
            dir,
            instance_id: instance_id.to_string(),
            ssm_secret: None,
        })
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("drover.toml")
    }

    /// Writes drover's config: `queue` on or off, `imds_poll` as given (zero: off), JSON
    /// logs at `level`.
    pub fn write_config(
        &self,
        rancher: &RancherServer,
        queue: Option<&str>,
        imds_poll: Duration,
        level: &str,
    ) -> std::io::Result<()> {
        self.write_config_with(rancher, queue, imds_poll, level, |_| {})
    }

    /// [`write_config`](Self::write_config), with `edit` changing the config before it is
    /// written (the reaper's keys, for one).
    pub fn write_config_with(
        &self,
        rancher: &RancherServer,
        queue: Option<&str>,
        imds_poll: Duration,
        level: &str,
        edit: impl FnOnce(&mut DroverConfig),
    ) -> std::io::Result<()> {
        let secret = self.dir.path().join("rancher.secret");
        crate::config::write_private(&secret, rancher.secret_key().as_bytes())?;
        let mut config = DroverConfig::default();
        config.rancher.url = Some(rancher.url());
        config.rancher.project_id = Some(rancher.project_id().to_string());
        config.rancher.access_key = Some(rancher.access_key().to_string());
        config.rancher.secret_key = Some(match &self.ssm_secret {
            Some(parameter) => Secret::Ssm(parameter.clone()),
            None => Secret::File(secret),
        });
        config.agent.labels = Some(crate::bed::labels());
        config.agent.privileged = Some(false);
        config.agent.register_timeout = Some(Duration::from_secs(60));
        config.lifecycle.queue_url = queue.map(str::to_string);
        config.lifecycle.imds_poll = Some(imds_poll);
        config.lifecycle.on_sigterm = Some(OnSigterm::Exit);
        config.state.dir = Some(self.dir.path().join("state"));
        config.log.format = Some(LogFormat::Json);
        config.log.level = Some(level.to_string());
        edit(&mut config);
        config.write(&self.config_path())
    }

    /// drover with `args` for this node: its config, the endpoints given, output to files
    /// in the node's dir (a long run never fills a pipe).
    pub fn launcher(&self, drover: &Path, ends: &Endpoints, args: &[&str]) -> Launcher {
        Launcher::new(drover, self.dir.path(), "drover")
            .config(&self.config_path())
            .endpoints(ends)
            .args(args)
    }
}

/// The endpoints of one instance's stand-ins; SQS at `sqs` when given.
pub fn endpoints(
    imds: &ImdsServer,
    asg: &AutoScalingServer,
    sqs: Option<String>,
    docker: &DockerEngine,
) -> Endpoints {
    Endpoints {
        imds: Some(imds.url()),
        autoscaling: Some(asg.url()),
        sqs,
        docker_host: Some(docker.docker_host()),
        ..Endpoints::default()
    }
}

/// Instance `n`'s IMDS options: its own id and address, in the group.
pub fn instance(n: usize) -> ImdsOptions {
    ImdsOptions {
        // 17 lowercase hex digits, as drover checks.
        instance_id: format!("i-0{n:016x}"),
        local_ipv4: format!("10.0.{}.{}", n / 250, n % 250 + 2),
        local_hostname: format!("ip-10-0-{}-{}.ec2.internal", n / 250, n % 250 + 2),
        ..ImdsOptions::default()
    }
}

/// Rancher answering at once: the figures are then drover's own.
pub fn zero_delay_rancher() -> RancherOptions {
    RancherOptions {
        transition_delay: Duration::ZERO,
        ..RancherOptions::default()
    }
}

/// One instance whose host is active, with its `drover run` watching for termination.
pub struct Watching {
    pub imds: ImdsServer,
    pub rancher: RancherServer,
    pub asg: AutoScalingServer,
    pub node: Node,
    pub drover: Running,
}

/// Starts instance `n`'s stand-ins and `drover run`, and waits until it is ready (watches):
/// on `queue` alone (IMDS polling off) when given, on IMDS polling every 5 s otherwise.
pub async fn start_watching(
    settings: &Settings,
    n: usize,
    rancher: RancherOptions,
    queue: Option<&str>,
    docker: &DockerEngine,
    moto: &MotoServer,
) -> Result<Watching, String> {
    start_watching_with(settings, n, rancher, queue, false, docker, moto).await
}

/// [`start_watching`], with the Rancher secret key read from an SSM parameter in moto when
/// `ssm_secret` is set.
pub async fn start_watching_with(
    settings: &Settings,
    n: usize,
    rancher: RancherOptions,
    queue: Option<&str>,
    ssm_secret: bool,
    docker: &DockerEngine,
    moto: &MotoServer,
) -> Result<Watching, String> {
    let opts = instance(n);
    let imds = ImdsServer::start(opts.clone()).await;
    let rancher = RancherServer::start(rancher).await;
    let asg = AutoScalingServer::start().await;
    add_group(&asg, HOOK_TIMEOUT);
    asg.add_instance(GROUP, &opts.instance_id, "m5.large", "us-east-1b");
    add_active_host(&rancher, &opts);
    let mut node = Node::new(&opts.instance_id).map_err(|e| e.to_string())?;
    if ssm_secret {
        let parameter = format!("/drover/bench/rancher-secret-{n}");
        moto.put_secure_parameter(&parameter, rancher.secret_key().as_str())
            .await;
        node.ssm_secret = Some(parameter);
    }
    let imds_poll = if queue.is_some() {
        Duration::ZERO
    } else {
        Duration::from_secs(5)
    };
    node.write_config(&rancher, queue, imds_poll, "info")
        .map_err(|e| e.to_string())?;
    let mut ends = endpoints(&imds, &asg, Some(moto.url()), docker);
    ends.ssm = Some(moto.url());
    let mut drover = node.launcher(&settings.drover, &ends, &["run"]).spawn()?;
    drover.wait_ready(Duration::from_secs(60)).await?;
    Ok(Watching {
        imds,
        rancher,
        asg,
        node,
        drover,
    })
}

impl Watching {
    pub async fn stop(&mut self) {
        self.drover.kill().await;
    }
}

/// The message Auto Scaling sends for a termination.
pub fn lifecycle_message(instance_id: &str, token: &str) -> String {
    crate::bed::direct_message(instance_id, token)
}

/// Polls the Auto Scaling stand-in until the instance's lifecycle action is completed.
pub async fn wait_for_completion(
    asg: &AutoScalingServer,
    instance_id: &str,
    limit: Duration,
) -> Result<(), String> {
    let until = tokio::time::Instant::now() + limit;
    loop {
        if asg
            .completions()
            .iter()
            .any(|c| c.instance_id == instance_id)
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > until {
            return Err(format!(
                "{instance_id}: no CompleteLifecycleAction within {limit:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Median and 95th percentile (nearest rank) of a sample.
pub fn median_p95(sample: &[Duration]) -> (Duration, Duration) {
    if sample.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    let mut sorted = sample.to_vec();
    sorted.sort();
    let rank = |p: f64| {
        let r = (p * sorted.len() as f64).ceil() as usize;
        sorted[r.clamp(1, sorted.len()) - 1]
    };
    (rank(0.5), rank(0.95))
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// One row of the report: what, value, target, met?
#[derive(Debug, Clone)]
pub struct Row {
    pub section: &'static str,
    pub what: String,
    pub value: String,
    pub target: String,
    /// `None`: no target for this figure.
    pub met: Option<bool>,
}

impl Row {
    pub fn new(section: &'static str, what: impl Into<String>, value: impl Into<String>) -> Row {
        Row {
            section,
            what: what.into(),
            value: value.into(),
            target: String::new(),
            met: None,
        }
    }

    pub fn target(mut self, target: impl Into<String>, met: bool) -> Row {
        self.target = target.into();
        self.met = Some(met);
        self
    }
}

/// The rows as a plain-text table.
pub fn table(rows: &[Row]) -> String {
    let w0 = rows.iter().map(|r| r.section.len()).max().unwrap_or(0);
    let w1 = rows.iter().map(|r| r.what.len()).max().unwrap_or(0);
    let w2 = rows.iter().map(|r| r.value.len()).max().unwrap_or(0);
    let w3 = rows.iter().map(|r| r.target.len()).max().unwrap_or(0);
    rows.iter()
        .map(|r| {
            let met = match r.met {
                Some(true) => "met",
                Some(false) => "MISSED",
                None => "",
            };
            format!(
                "{:<w0$}  {:<w1$}  {:>w2$}  {:<w3$}  {met}\n",
                r.section, r.what, r.value, r.target
            )
        })
        .collect()
}

/// The rows as a Markdown table.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from("| section | figure | value | target | |\n|---|---|---:|---|---|\n");
    for r in rows {
        let met = match r.met {
            Some(true) => "met",
            Some(false) => "**missed**",
            None => "",
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {met} |\n",
            r.section, r.what, r.value, r.target
        ));
    }
    out
}

/// What the machine is, for the report.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
        .map(|kb| format!("{:.0} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{model}, {cores} cores, {mem}, Linux {}", kernel.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p95_by_nearest_rank() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            median_p95(&ms(&[5, 1, 3, 2, 4])),
            (Duration::from_millis(3), Duration::from_millis(5))
        );
        let twenty: Vec<u64> = (1..=20).collect();
        assert_eq!(
            median_p95(&ms(&twenty)),
            (Duration::from_millis(10), Duration::from_millis(19))
        );
        assert_eq!(median_p95(&[]), (Duration::ZERO, Duration::ZERO));
    }

    #[test]
    fn rows_render_as_text_and_markdown() {
        let rows = vec![
            Row::new("fleet", "dead-lettered", "0").target("0", true),
            Row::new("footprint", "VmRSS", "9 MiB").target("<= 8 MiB", false),
        ];
        let text = table(&rows);
        assert!(text.contains("met") && text.contains("MISSED"), "{text}");
        let md = markdown(&rows);
        assert!(
            md.contains("| footprint | VmRSS | 9 MiB | <= 8 MiB | **missed** |"),
            "{md}"
        );
    }

    #[test]
    fn instance_ids_are_what_drover_accepts() {
        for n in [0, 1, 1000, 0xffff] {
            let id = instance(n).instance_id;
            let hex = id.strip_prefix("i-").expect("i- prefix");
            assert!(
                hex.len() == 17
                    && hex
                        .chars()
                        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
                "{id}"
            );
        }
    }
}
