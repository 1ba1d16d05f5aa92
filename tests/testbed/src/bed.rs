//! One instance's world for an end-to-end test (and the demo): every stand-in, a private
//! Docker engine, moto with the lifecycle queue when asked, a scratch directory for the
//! config, the secret and the state dir, and drover's config as a typed value that is
//! written before every launch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::autoscaling::{AutoScalingServer, HookSpec, LAUNCHING, TERMINATING};
use crate::config::{DroverConfig, Secret};
use crate::docker::DockerEngine;
use crate::imds::{ImdsOptions, ImdsServer};
use crate::launch::{Endpoints, Error, Launcher, Run, Running};
use crate::moto::MotoServer;
use crate::pager::PagerServer;
use crate::rancher::{HostSnapshot, HostSpec, RancherOptions, RancherServer};

/// A distinctive secret, so that a leak anywhere is easy to find.
pub const SECRET: &str = "s3cr3t-DroverTestSecretKey-9f8e7d";
pub const ACCESS: &str = "DROVERTESTACCESS";
pub const ROUTING_KEY: &str = "R0UT1NGKEYdroverTEST0123456789ab";
/// The instance's group and its termination hook.
pub const GROUP: &str = "crawlers";
pub const HOOK: &str = "drain";
/// The group's launching hook, when a test asks for one ([`add_launch_hook`]).
pub const LAUNCH_HOOK: &str = "launching";
/// Every line `drover check` prints, by name.
pub const CHECKS: [&str; 10] = [
    "config",
    "imds",
    "docker",
    "rancher-key",
    "rancher",
    "sqs",
    "autoscaling",
    "reaper",
    "pager-key",
    "pager",
];
/// The termination hook's heartbeat timeout unless a test says otherwise: the Terraform
/// example's.
pub const HOOK_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a run to completion may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// How the Docker engine of a bed starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DockerMode {
    /// Running, with the agent image, before drover starts.
    Running,
    /// Dir and socket decided, engine not started: the test starts it.
    Later,
}

pub struct BedOptions {
    pub imds: ImdsOptions,
    pub rancher: RancherOptions,
    pub docker: DockerMode,
    /// The termination hook's heartbeat timeout.
    pub hook_timeout: Duration,
    /// `Some(heartbeat timeout)`: the group also has the launching hook, and the bed's
    /// instance is being launched, waiting in `Pending:Wait` for someone to complete the
    /// launching action; `None`: no launching hook, the instance is `InService`.
    pub launch: Option<Duration>,
    /// A moto SQS with the lifecycle queue (`maxReceiveCount` 5 to its dead-letter queue),
    /// set as `lifecycle.queue_url`.
    pub queue: bool,
    /// A moto for SSM parameters (the same one as the queue's, when there is a queue), set
    /// as `AWS_ENDPOINT_URL_SSM`; see [`Bed::moto`].
    pub ssm: bool,
    /// The drover binary.
    pub drover: PathBuf,
}

impl Default for BedOptions {
    fn default() -> Self {
        BedOptions {
            imds: ImdsOptions::default(),
            rancher: RancherOptions {
                secret_key: SECRET.into(),
                access_key: ACCESS.into(),
                token_create_delay: Duration::from_millis(800),
                register_delay: Duration::from_millis(800),
                ..RancherOptions::default()
            },
            docker: DockerMode::Running,
            hook_timeout: HOOK_TIMEOUT,
            launch: None,
            queue: false,
            ssm: false,
            drover: crate::launch::drover_bin(),
        }
    }
}

/// moto and the queue drover watches.
pub struct Queue {
    pub moto: MotoServer,
    pub url: String,
}

/// Every stand-in of the test bed, a private Docker engine, and a scratch dir for the
/// config and the state dir.
pub struct Bed {
    pub imds: ImdsServer,
    pub rancher: RancherServer,
    pub asg: AutoScalingServer,
    pub pager: PagerServer,
    pub docker: DockerEngine,
    pub dir: tempfile::TempDir,
    pub instance_id: String,
    /// What drover runs with; written before every launch, so a test changes it between
    /// runs.
    pub config: DroverConfig,
    /// Extra environment for drover, set over the bed's own.
    pub extra_env: Vec<(String, String)>,
    sqs: Option<Queue>,
    /// moto for SSM when there is no queue (with one, the queue's serves SSM too).
    ssm: Option<MotoServer>,
    drover: PathBuf,
    runs: AtomicUsize,
}

/// The group with its termination hook, as the Terraform example sets it up.
pub fn add_group(asg: &AutoScalingServer, heartbeat_timeout: Duration) {
    asg.add_group(
        GROUP,
        vec![HookSpec {
            name: HOOK.into(),
            transition: TERMINATING.into(),
            heartbeat_timeout,
            default_result: "ABANDON".into(),
        }],
    );
}

/// The group's launching hook ([`LAUNCH_HOOK`], `DefaultResult` `ABANDON`: an instance
/// nobody vouches for is not put in service) next to its termination hook, which keeps its
/// timeout ([`HOOK_TIMEOUT`] when the group had none).
pub fn add_launch_hook(asg: &AutoScalingServer, heartbeat_timeout: Duration) {
    let termination = asg
        .hooks(GROUP)
        .unwrap_or_default()
        .into_iter()
        .find(|h| h.transition == TERMINATING)
        .unwrap_or_else(|| HookSpec {
            name: HOOK.into(),
            transition: TERMINATING.into(),
            heartbeat_timeout: HOOK_TIMEOUT,
            default_result: "ABANDON".into(),
        });
    asg.add_group(
        GROUP,
        vec![
            termination,
            HookSpec {
                name: LAUNCH_HOOK.into(),
                transition: LAUNCHING.into(),
                heartbeat_timeout,
                default_result: "ABANDON".into(),
            },
        ],
    );
}

/// The group gets its launching hook ([`add_launch_hook`]) and launches the instance, which
/// waits in `Pending:Wait` for someone to complete the launching action.
pub fn launch_into_group(asg: &AutoScalingServer, instance_id: &str, heartbeat_timeout: Duration) {
    add_launch_hook(asg, heartbeat_timeout);
    asg.launch_instance(GROUP, instance_id, "m5.large", "us-east-1b", Duration::ZERO);
}

/// An active host for the instance, as a registered agent leaves it.
pub fn add_active_host(rancher: &RancherServer, opts: &ImdsOptions) -> String {
    let mut labels = BTreeMap::new();
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

/// A lifecycle message as Auto Scaling sends it straight to SQS, for this group and hook.
pub fn direct_message(instance_id: &str, token: &str) -> String {
    crate::autoscaling::termination_message(GROUP, HOOK, instance_id, token)
}

/// The labels the bed's hosts carry.
pub fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("role".to_string(), "crawling".to_string()),
        ("env".to_string(), "prod".to_string()),
    ])
}

impl Bed {
    pub async fn start() -> Bed {
        Bed::with(BedOptions::default()).await
    }

    /// A bed as asked; panics (for a test) when the engine or moto cannot start.
    pub async fn with(opts: BedOptions) -> Bed {
        Bed::try_with(opts).await.expect("the test bed starts")
    }

    pub async fn try_with(opts: BedOptions) -> Result<Bed, Error> {
        let instance_id = opts.imds.instance_id.clone();
        let imds = ImdsServer::start(opts.imds).await;
        let rancher = RancherServer::start(opts.rancher).await;
        let asg = AutoScalingServer::start().await;
        add_group(&asg, opts.hook_timeout);
        match opts.launch {
            Some(timeout) => launch_into_group(&asg, &instance_id, timeout),
            None => asg.add_instance(GROUP, &instance_id, "m5.large", "us-east-1b"),
        }
        let pager = PagerServer::start().await;
        let docker = match opts.docker {
            DockerMode::Running => DockerEngine::launch().await,
            DockerMode::Later => DockerEngine::reserve(),
        }
        .map_err(|e| Error::new(format!("dockerd (run scripts/testbed-setup.sh): {e}")))?;
        rancher.watch_docker(docker.socket());
        let start_moto = || async {
            MotoServer::start()
                .await
                .map_err(|e| Error::new(format!("moto_server (run scripts/testbed-setup.sh): {e}")))
        };
        let ssm = if opts.ssm && !opts.queue {
            Some(start_moto().await?)
        } else {
            None
        };
        let sqs = if opts.queue {
            let moto = start_moto().await?;
            let url = moto.create_queue("drover-lifecycle", Some(5)).await;
            Some(Queue { moto, url })
        } else {
            None
        };
        let dir = tempfile::Builder::new()
            .prefix("drover-test-")
            .tempdir()
            .map_err(|e| Error::new(format!("scratch dir: {e}")))?;
        let secret_file = dir.path().join("rancher.secret");
        crate::config::write_private(&secret_file, format!("{SECRET}\n").as_bytes())
            .map_err(|e| Error::new(format!("{}: {e}", secret_file.display())))?;

        let mut config = DroverConfig::default();
        config.rancher.url = Some(rancher.url());
        config.rancher.project_id = Some(rancher.project_id().to_string());
        config.rancher.access_key = Some(ACCESS.to_string());
        config.rancher.secret_key = Some(Secret::File(secret_file));
        config.agent.labels = Some(labels());
        // Privileged containers cannot start on the test machines.
        config.agent.privileged = Some(false);
        config.agent.register_timeout = Some(Duration::from_secs(60));
        config.lifecycle.queue_url = sqs.as_ref().map(|q| q.url.clone());
        config.pager.pagerduty_url = Some(pager.enqueue_url());
        config.state.dir = Some(dir.path().join("state"));
        config.log.level = Some("debug".into());
        Ok(Bed {
            imds,
            rancher,
            asg,
            pager,
            docker,
            dir,
            instance_id,
            config,
            extra_env: Vec::new(),
            sqs,
            ssm,
            drover: opts.drover,
            runs: AtomicUsize::new(0),
        })
    }

    /// moto and the lifecycle queue; panics on a bed started without `queue`.
    pub fn queue(&self) -> (&MotoServer, &str) {
        let q = self
            .sqs
            .as_ref()
            .expect("a bed with a queue (BedOptions::queue)");
        (&q.moto, &q.url)
    }

    /// moto, for SSM parameters and Secrets Manager secrets; panics on a bed started with
    /// neither `queue` nor `ssm`.
    pub fn moto(&self) -> &MotoServer {
        match (&self.sqs, &self.ssm) {
            (Some(q), _) => &q.moto,
            (None, Some(moto)) => moto,
            (None, None) => panic!("a bed with moto (BedOptions::ssm or ::queue)"),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("drover.toml")
    }

    /// The file holding the Rancher secret key.
    pub fn secret_file(&self) -> PathBuf {
        self.dir.path().join("rancher.secret")
    }

    /// Where the bed's stand-ins are; the region comes from IMDS, as on an instance.
    pub fn endpoints(&self) -> Endpoints {
        Endpoints {
            imds: Some(self.imds.url()),
            autoscaling: Some(self.asg.url()),
            sqs: self.sqs.as_ref().map(|q| q.moto.url()),
            ssm: self
                .sqs
                .as_ref()
                .map(|q| &q.moto)
                .or(self.ssm.as_ref())
                .map(MotoServer::url),
            aws: None,
            region: None,
            docker_host: Some(self.docker.docker_host()),
        }
    }

    /// drover with `args`, its config written, pointing at the bed; add to it before
    /// running it.
    pub fn launcher(&self, args: &[&str]) -> Launcher {
        self.config
            .write(&self.config_path())
            .expect("writing drover's config");
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        Launcher::new(&self.drover, self.dir.path(), &format!("drover-{n}"))
            .config(&self.config_path())
            .endpoints(&self.endpoints())
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .args(args)
    }

    /// Starts drover in the background.
    pub fn spawn(&self, args: &[&str]) -> Running {
        self.launcher(args).spawn().expect("drover starts")
    }

    /// Runs drover to completion (bounded: a hung drover fails the test, it never hangs it).
    pub async fn drover(&self, args: &[&str]) -> Run {
        self.launcher(args)
            .run(RUN_LIMIT)
            .await
            .expect("drover runs to its end")
    }

    /// Hosts of this instance that are not removed or purged.
    pub fn my_hosts(&self) -> Vec<HostSnapshot> {
        self.rancher
            .hosts()
            .into_iter()
            .filter(|h| h.labels.get("aws.instance_id") == Some(&self.instance_id))
            .filter(|h| h.state != "removed" && h.state != "purged")
            .collect()
    }

    /// Registers the host and returns its id.
    pub async fn register(&self) -> String {
        let run = self.drover(&["register"]).await;
        let mine = self.my_hosts();
        assert!(
            run.code == Some(0) && mine.len() == 1,
            "drover register: exit {:?}, hosts of this instance {mine:?}\n{}",
            run.code,
            self.what_the_bed_saw(&run)
        );
        mine[0].id.clone()
    }

    /// drover's output and what the Rancher stand-in and the engine saw, for a failure.
    pub fn what_the_bed_saw(&self, run: &Run) -> String {
        format!(
            "--- stdout\n{}\n--- stderr\n{}\n--- bootstrap containers seen\n{:#?}\n--- hosts\n{:#?}\n--- dockerd log\n{}",
            run.stdout,
            run.stderr,
            self.rancher.bootstraps_seen(),
            self.rancher.hosts(),
            self.docker.log_tail()
        )
    }

    /// The registration record drover wrote, if any.
    pub fn registration(&self) -> Option<serde_json::Value> {
        let path = self.state_dir().join("registration.json");
        let text = std::fs::read_to_string(path).ok()?;
        Some(serde_json::from_str(&text).expect("registration.json is JSON"))
    }

    /// Peer `n`: another instance of the group (in service), with an active host in this
    /// environment labelled as drover labels it; its (instance id, host id).
    pub fn add_peer(&self, n: u32) -> (String, String) {
        let instance = peer_instance(n);
        let id = self.rancher.add_host(HostSpec {
            hostname: format!("peer-{n}"),
            labels: BTreeMap::from([
                ("aws.instance_id".to_string(), instance.clone()),
                ("aws.autoscaling_group".to_string(), GROUP.to_string()),
            ]),
            state: "active".into(),
            agent_state: None,
            agent_ip: format!("10.0.3.{n}"),
        });
        self.asg
            .add_instance(GROUP, &instance, "m5.large", "us-east-1b");
        (instance, id)
    }

    /// Peer `n` whose machine died: its host's agent is `disconnected` at once (see
    /// [`RancherServer::lose_agent`] for the way there in real time), and Auto Scaling shows
    /// its instance as `fate` says. Its (instance id, host id).
    pub fn add_dead_peer(&self, n: u32, fate: Fate) -> (String, String) {
        let (instance, host) = self.add_peer(n);
        self.rancher
            .lose_agent(&host, Duration::ZERO, Duration::ZERO);
        match fate {
            Fate::Gone => {
                self.asg.vanish(&instance);
            }
            Fate::InService => {}
            Fate::Terminating(lag) => {
                self.asg.begin_termination(&instance, lag);
            }
        }
        (instance, host)
    }

    /// Another instance of the group, in service, with a drover of its own against the same
    /// stand-ins: its own IMDS, config and state dir. No host in Rancher.
    pub async fn other_instance(&self, n: u32) -> OtherInstance {
        let instance_id = peer_instance(n);
        let imds = ImdsServer::start(ImdsOptions {
            instance_id: instance_id.clone(),
            local_ipv4: format!("10.0.3.{n}"),
            local_hostname: format!("peer-{n}.ec2.internal"),
            ..ImdsOptions::default()
        })
        .await;
        self.asg
            .add_instance(GROUP, &instance_id, "m5.large", "us-east-1b");
        let dir = self.dir.path().join(format!("other-{n}"));
        std::fs::create_dir_all(&dir).expect("the other drover's dir");
        let mut config = self.config.clone();
        config.state.dir = Some(dir.join("state"));
        OtherInstance {
            imds,
            instance_id,
            config,
            dir,
            runs: AtomicUsize::new(0),
        }
    }
}

/// The instance id of peer `n`.
pub fn peer_instance(n: u32) -> String {
    format!("i-0000000000000{n:04x}")
}

/// What Auto Scaling shows of a dead peer's instance ([`Bed::add_dead_peer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Its termination is over: no group knows it.
    Gone,
    /// Still in service (a network partition, not a death).
    InService,
    /// Being terminated: `Terminating`, then `Terminating:Wait` after this lag.
    Terminating(Duration),
}

/// A second drover of the fleet ([`Bed::other_instance`]).
pub struct OtherInstance {
    pub imds: ImdsServer,
    pub instance_id: String,
    /// What it runs with; written before every launch.
    pub config: DroverConfig,
    dir: PathBuf,
    runs: AtomicUsize,
}

impl OtherInstance {
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// drover as this instance, with `args`, against `bed`'s stand-ins.
    pub fn launcher(&self, bed: &Bed, args: &[&str]) -> Launcher {
        let config = self.dir.join("drover.toml");
        self.config.write(&config).expect("writing drover's config");
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        let endpoints = Endpoints {
            imds: Some(self.imds.url()),
            ..bed.endpoints()
        };
        Launcher::new(&bed.drover, &self.dir, &format!("drover-{n}"))
            .config(&config)
            .endpoints(&endpoints)
            .envs(bed.extra_env.iter().map(|(k, v)| (k, v)))
            .args(args)
    }

    /// Runs drover as this instance to completion (bounded).
    pub async fn drover(&self, bed: &Bed, args: &[&str]) -> Run {
        self.launcher(bed, args)
            .run(RUN_LIMIT)
            .await
            .expect("drover runs to its end")
    }
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Every file under `dir`, as text (lossy), for leak checks.
pub fn all_files_text(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.push_str(&all_files_text(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    out
}

/// Polls `f` until it returns `Some`, for at most `limit`.
pub async fn eventually<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if tokio::time::Instant::now() >= end {
            panic!("{what}: not within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_launch_hook_joins_the_termination_hook() {
        let asg = AutoScalingServer::start().await;
        add_group(&asg, Duration::from_secs(42));
        add_launch_hook(&asg, Duration::from_secs(7));
        add_launch_hook(&asg, Duration::from_secs(9));
        let hooks: Vec<(String, String, Duration, String)> = asg
            .hooks(GROUP)
            .expect("the group")
            .into_iter()
            .map(|h| (h.name, h.transition, h.heartbeat_timeout, h.default_result))
            .collect();
        let want = vec![
            (
                HOOK.to_string(),
                TERMINATING.to_string(),
                Duration::from_secs(42),
                "ABANDON".to_string(),
            ),
            (
                LAUNCH_HOOK.to_string(),
                LAUNCHING.to_string(),
                Duration::from_secs(9),
                "ABANDON".to_string(),
            ),
        ];
        assert_eq!(
            hooks, want,
            "the termination hook kept, the launching one replaced"
        );
        asg.launch_instance(GROUP, "i-1", "m5.large", "us-east-1b", Duration::ZERO);
        assert_eq!(asg.lifecycle_state("i-1").as_deref(), Some("Pending:Wait"));
    }
}
