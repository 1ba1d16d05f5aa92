//! `drover-testbed bench`: measures the built drover against the test bed and prints a
//! table (footprint, reaction time, boot overhead, AWS calls while idle, a fleet
//! simulation), writing the same as Markdown with the machine and the date.
//!
//! Nothing here asserts on time: these are measurements, compared with the targets in the
//! report. The shared machine is noisy; ratios within one run are what to read.

pub mod boot;
pub mod fleet;
pub mod footprint;
pub mod reaction;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use crate::autoscaling::{AutoScalingServer, HookSpec};
use crate::docker::DockerEngine;
use crate::imds::{ImdsOptions, ImdsServer};
use crate::moto::MotoServer;
use crate::rancher::{HostSpec, RancherOptions, RancherServer};

pub const GROUP: &str = "crawlers";
pub const HOOK: &str = "drain";

/// What the harness was asked to do.
#[derive(Debug, Clone)]
pub struct Settings {
    pub drover: PathBuf,
    pub idle: Duration,
    pub runs: usize,
    pub fleet: usize,
    pub out: Option<PathBuf>,
    /// Only these sections (footprint, reaction, boot, fleet); empty: all.
    pub only: Vec<String>,
}

/// One drover's files: config, secret, state dir.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub instance_id: String,
}

impl Node {
    pub fn new(instance_id: &str) -> std::io::Result<Node> {
        let dir = tempfile::Builder::new().prefix("drover-bench-").tempdir()?;
        Ok(Node {
            dir,
            instance_id: instance_id.to_string(),
        })
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("drover.toml")
    }

    /// Writes drover's config: `queue` on or off, `imds_poll` as given.
    pub fn write_config(
        &self,
        rancher: &RancherServer,
        queue: Option<&str>,
        imds_poll: &str,
        level: &str,
    ) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let secret = self.dir.path().join("rancher.secret");
        std::fs::write(&secret, rancher.secret_key())?;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
        let queue_line = queue
            .map(|q| format!("queue_url = \"{q}\"\n"))
            .unwrap_or_default();
        let text = format!(
            r#"[rancher]
url = "{url}"
project_id = "{project}"
access_key = "{access}"
secret_key_file = "{secret}"

[agent]
labels = {{ role = "crawling", env = "prod" }}
privileged = false
register_timeout = "60s"

[lifecycle]
{queue_line}imds_poll = "{imds_poll}"
on_sigterm = "exit"

[state]
dir = "{state}"

[log]
format = "json"
level = "{level}"
"#,
            url = rancher.url(),
            project = rancher.project_id(),
            access = rancher.access_key(),
            secret = secret.display(),
            state = self.dir.path().join("state").display(),
        );
        std::fs::write(self.config_path(), text)?;
        std::fs::set_permissions(self.config_path(), std::fs::Permissions::from_mode(0o600))
    }
}

/// The endpoints a drover process talks to.
pub struct Endpoints<'a> {
    pub imds: &'a ImdsServer,
    pub asg: &'a AutoScalingServer,
    pub sqs: Option<String>,
    pub docker_host: String,
}

/// The drover binary with a clean environment pointing at the bed; stderr (the log) goes
/// to `log`, so that a long run never fills a pipe.
pub fn drover_command(
    drover: &Path,
    node: &Node,
    ends: &Endpoints<'_>,
    args: &[&str],
) -> std::io::Result<tokio::process::Command> {
    let log = std::fs::File::create(node.dir.path().join("drover.log"))?;
    let mut cmd = tokio::process::Command::new(drover);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", node.dir.path())
        .env("DROVER_CONFIG", node.config_path())
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", ends.imds.url())
        .env("AWS_ENDPOINT_URL_AUTO_SCALING", ends.asg.url())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("DOCKER_HOST", &ends.docker_host)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true);
    if let Some(sqs) = &ends.sqs {
        cmd.env("AWS_ENDPOINT_URL_SQS", sqs);
    }
    Ok(cmd)
}

/// drover's log so far.
pub fn log_of(node: &Node) -> String {
    std::fs::read_to_string(node.dir.path().join("drover.log")).unwrap_or_default()
}

/// Waits until drover's log contains `needle`, or `limit` passes.
pub async fn wait_for_log(node: &Node, needle: &str, limit: Duration) -> Result<(), String> {
    let until = tokio::time::Instant::now() + limit;
    loop {
        if log_of(node).contains(needle) {
            return Ok(());
        }
        if tokio::time::Instant::now() > until {
            return Err(format!(
                "drover did not log {needle:?} within {limit:?}; log:\n{}",
                tail(&log_of(node), 20)
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
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

/// The group with its termination hook, as Terraform sets it up.
pub fn add_group(asg: &AutoScalingServer) {
    asg.add_group(
        GROUP,
        vec![HookSpec {
            name: HOOK.into(),
            transition: "autoscaling:EC2_INSTANCE_TERMINATING".into(),
            heartbeat_timeout: Duration::from_secs(300),
            default_result: "ABANDON".into(),
        }],
    );
}

/// An active host for the instance, as a registered agent leaves it: drover's `run` then
/// has nothing to start.
pub fn add_active_host(rancher: &RancherServer, opts: &ImdsOptions) -> String {
    let mut labels = std::collections::BTreeMap::new();
    labels.insert("aws.instance_id".to_string(), opts.instance_id.clone());
    labels.insert("aws.autoscaling_group".to_string(), GROUP.to_string());
    labels.insert("role".to_string(), "crawling".to_string());
    rancher.add_host(HostSpec {
        hostname: opts.local_hostname.clone(),
        labels,
        state: "active".into(),
        agent_state: Some("active".into()),
        agent_ip: opts.local_ipv4.clone(),
    })
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
    pub child: tokio::process::Child,
}

/// Starts instance `n`'s stand-ins and `drover run`, and waits until it watches: on
/// `queue` alone (IMDS polling off) when given, on IMDS polling every 5 s otherwise.
pub async fn start_watching(
    settings: &Settings,
    n: usize,
    rancher: RancherOptions,
    queue: Option<&str>,
    docker: &DockerEngine,
    moto: &MotoServer,
) -> Result<Watching, String> {
    let opts = instance(n);
    let imds = ImdsServer::start(opts.clone()).await;
    let rancher = RancherServer::start(rancher).await;
    let asg = AutoScalingServer::start().await;
    add_group(&asg);
    asg.add_instance(GROUP, &opts.instance_id, "m5.large", "us-east-1b");
    add_active_host(&rancher, &opts);
    let node = Node::new(&opts.instance_id).map_err(|e| e.to_string())?;
    let imds_poll = if queue.is_some() { "0s" } else { "5s" };
    node.write_config(&rancher, queue, imds_poll, "info")
        .map_err(|e| e.to_string())?;
    let ends = Endpoints {
        imds: &imds,
        asg: &asg,
        sqs: Some(moto.url()),
        docker_host: docker.docker_host(),
    };
    let child = drover_command(&settings.drover, &node, &ends, &["run"])
        .map_err(|e| e.to_string())?
        .spawn()
        .map_err(|e| format!("{}: {e}", settings.drover.display()))?;
    wait_for_log(&node, "watching for termination", Duration::from_secs(60)).await?;
    Ok(Watching {
        imds,
        rancher,
        asg,
        node,
        child,
    })
}

impl Watching {
    pub async fn stop(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// The message Auto Scaling sends for a termination.
pub fn lifecycle_message(instance_id: &str, token: &str) -> String {
    crate::autoscaling::termination_message(GROUP, HOOK, instance_id, token)
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
