//! `drover status [--json]`: what drover knows about this host, from IMDS, the state dir,
//! Rancher and Docker, each read bounded; it changes nothing anywhere.
//!
//! A part that cannot be read says why and the others go on. The exit is 1 ("cannot tell")
//! only when the instance cannot be known (IMDS gave no identity within its bound: nothing
//! else can be tied to this host then) or a record in the state dir cannot be read (a
//! record there that no one can read is a take-out that will not resume). Rancher or Docker
//! not answering is part of the answer, not a failure of it.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::CommandError;
use crate::config::Config;
use crate::docker::{AgentDocker, ContainerInfo, Settings as DockerSettings};
use crate::imds::{Imds, InstanceIdentity};
use crate::rancher::{Host, RancherClient, RancherError, ResolvedApi};
use crate::state::{
    record_file, BootFailure, Registration, StateDir, StateError, SweepRecord, TakeOutRecord,
    BOOT_FAILURE_FILE, REAPER_SWEEP_FILE, REGISTRATION_FILE,
};

/// The JSON's `schema`: raised when a field changes meaning or goes; new fields keep it.
pub const SCHEMA: u32 = 1;
/// IMDS answers in milliseconds on an instance; a budget of retries inside this bound.
const IMDS_BOUND: Duration = Duration::from_secs(4);
/// The identity's own retry budget, short of [`IMDS_BOUND`], so that a failing IMDS is
/// reported with its own reason rather than as no answer.
const IMDS_RETRIES: Duration = Duration::from_secs(2);
/// Reading the secret key, connecting and listing the hosts, all together.
const RANCHER_BOUND: Duration = Duration::from_secs(6);
const DOCKER_BOUND: Duration = Duration::from_secs(4);

/// How a part of the status was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Seen {
    /// Read from its source now.
    Ok,
    /// Its source did not answer, or refused (see `detail`).
    Unreachable,
    /// Not asked: it needs the instance id, which IMDS did not give.
    Unknown,
    /// The state dir holds the record.
    Recorded,
    /// The state dir holds no such record.
    None,
    /// The record is there but cannot be read (see `detail`).
    Unreadable,
}

impl Seen {
    fn as_str(self) -> &'static str {
        match self {
            Seen::Ok => "ok",
            Seen::Unreachable => "unreachable",
            Seen::Unknown => "unknown",
            Seen::Recorded => "recorded",
            Seen::None => "none",
            Seen::Unreadable => "unreadable",
        }
    }
}

/// Everything `drover status` shows; its JSON is the `--json` output.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub schema: u32,
    pub drover_version: String,
    /// The config file the status was read with.
    pub config: String,
    pub state_dir: String,
    pub instance: InstancePart,
    pub registration: RecordPart<Registration>,
    pub rancher: RancherPart,
    pub agent_container: AgentPart,
    pub sources: SourcesPart,
    pub take_out: RecordPart<TakeOutView>,
    pub boot_failure: RecordPart<BootFailure>,
    pub last_sweep: RecordPart<SweepRecord>,
}

#[derive(Debug, Clone, Serialize)]
pub struct InstancePart {
    pub status: Seen,
    pub detail: Option<String>,
    pub instance_id: Option<String>,
    pub instance_type: Option<String>,
    pub availability_zone: Option<String>,
    pub region: Option<String>,
    pub autoscaling_group: Option<String>,
    pub target_lifecycle_state: Option<String>,
}

/// A record of the state dir: `recorded` with it, `none`, `unreadable`, or `unknown` (a
/// record named by the instance id, which IMDS did not give).
#[derive(Debug, Clone, Serialize)]
pub struct RecordPart<T> {
    pub status: Seen,
    pub detail: Option<String>,
    pub record: Option<T>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RancherPart {
    pub status: Seen,
    pub detail: Option<String>,
    pub url: String,
    pub project_id: String,
    /// The API root in use (`v1`, `v2-beta`), once connected.
    pub api: Option<String>,
    /// Every host labelled with this instance id, active ones first.
    pub hosts: Vec<HostView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostView {
    pub id: String,
    pub hostname: Option<String>,
    pub state: String,
    /// Rancher's raw `agentState`.
    pub agent_state: Option<String>,
    /// `connected`, `reconnecting` or `disconnected`, read as the API version reports it.
    pub agent: String,
    pub agent_ip: Option<String>,
    /// The host the registration record names.
    pub registered: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentPart {
    pub status: Seen,
    pub detail: Option<String>,
    pub docker_host: String,
    /// The engine's version and API version, e.g. `engine 20.10.24 (API 1.41)`.
    pub engine: Option<String>,
    /// The `rancher-agent` container; `null` when there is none.
    pub container: Option<ContainerView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerView {
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: String,
    pub running: bool,
}

/// What `drover run` watches, from the config.
#[derive(Debug, Clone, Serialize)]
pub struct SourcesPart {
    pub queue_url: Option<String>,
    pub hook_name: Option<String>,
    /// `null`: IMDS polling is off.
    pub imds_poll_ms: Option<u64>,
    pub on_sigterm: String,
    pub handle_peers: bool,
    pub reaper: ReaperView,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReaperView {
    pub enabled: bool,
    pub interval_ms: u64,
    pub max_per_sweep: usize,
    pub dry_run: bool,
}

/// A take-out record, its timeline as objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TakeOutView {
    pub instance_id: String,
    pub host_id: Option<String>,
    pub other_hosts: Vec<String>,
    pub group: Option<String>,
    pub hook: Option<String>,
    pub source: String,
    pub started_at: String,
    pub taken_out: bool,
    pub hook_completed: bool,
    /// Both halves done.
    pub finished: bool,
    pub paged: bool,
    pub timeline: Vec<TimelineEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimelineEntry {
    /// RFC 3339, UTC.
    pub at: String,
    pub event: String,
}

impl From<TakeOutRecord> for TakeOutView {
    fn from(r: TakeOutRecord) -> TakeOutView {
        TakeOutView {
            finished: r.finished(),
            instance_id: r.instance_id,
            host_id: r.host_id,
            other_hosts: r.other_hosts,
            group: r.group,
            hook: r.hook,
            source: r.source,
            started_at: r.started_at,
            taken_out: r.taken_out,
            hook_completed: r.hook_completed,
            paged: r.paged,
            timeline: r
                .timeline
                .into_iter()
                .map(|(at, event)| TimelineEntry { at, event })
                .collect(),
        }
    }
}

impl Status {
    /// Whether the status could tell: the instance is known and every record could be read.
    pub fn can_tell(&self) -> bool {
        self.instance.status == Seen::Ok
            && [
                self.registration.status,
                self.take_out.status,
                self.boot_failure.status,
                self.last_sweep.status,
            ]
            .iter()
            .all(|s| *s != Seen::Unreadable)
    }

    /// Why the status cannot tell, for the error line; `None` when it can.
    fn why_not(&self) -> Option<String> {
        if self.can_tell() {
            return None;
        }
        let mut why = Vec::new();
        if self.instance.status != Seen::Ok {
            why.push(format!(
                "the instance cannot be known ({})",
                self.instance.detail.as_deref().unwrap_or("IMDS")
            ));
        }
        for (name, status, detail) in [
            (
                "registration",
                self.registration.status,
                &self.registration.detail,
            ),
            ("take-out", self.take_out.status, &self.take_out.detail),
            (
                "boot failure",
                self.boot_failure.status,
                &self.boot_failure.detail,
            ),
            (
                "last sweep",
                self.last_sweep.status,
                &self.last_sweep.detail,
            ),
        ] {
            if status == Seen::Unreadable {
                why.push(format!(
                    "the {name} record cannot be read ({})",
                    detail.as_deref().unwrap_or("?")
                ));
            }
        }
        Some(why.join("; "))
    }
}

/// `drover status [--json]`: read every part, print, exit 1 when it cannot tell.
pub async fn status(config: &Config, json: bool) -> Result<(), CommandError> {
    let status = gather(config).await;
    if json {
        let text = serde_json::to_string_pretty(&status)
            .map_err(|e| CommandError::Setup(format!("cannot render the status: {e}")))?;
        println!("{text}");
    } else {
        print!("{}", render_text(&status));
    }
    match status.why_not() {
        None => Ok(()),
        Some(why) => Err(CommandError::CannotTell(why)),
    }
}

/// Every part, the remote ones at once, each within its bound.
async fn gather(config: &Config) -> Status {
    let state = StateDir::new(&config.state.dir);
    let registration = read_record::<Registration>(&state, REGISTRATION_FILE);
    let boot_failure = read_record::<BootFailure>(&state, BOOT_FAILURE_FILE);
    let last_sweep = read_record::<SweepRecord>(&state, REAPER_SWEEP_FILE);

    let rancher_deadline = Instant::now() + RANCHER_BOUND;
    let (identity, rancher, agent_container) = tokio::join!(
        read_identity(),
        connect_rancher(config, rancher_deadline),
        read_agent_container(),
    );
    let registered_host = registration.record.as_ref().map(|r| r.host_id.as_str());
    let rancher = match &identity {
        Ok(id) => {
            rancher_hosts(
                config,
                rancher,
                &id.instance_id,
                registered_host,
                rancher_deadline,
            )
            .await
        }
        Err(_) => RancherPart {
            status: Seen::Unknown,
            detail: Some("needs the instance id from IMDS".into()),
            ..rancher_settings(config)
        },
    };
    let take_out = match &identity {
        Ok(id) => {
            let part = read_record::<TakeOutRecord>(&state, &record_file(&id.instance_id));
            RecordPart {
                status: part.status,
                detail: part.detail,
                record: part.record.map(TakeOutView::from),
            }
        }
        Err(_) => RecordPart {
            status: Seen::Unknown,
            detail: Some("needs the instance id from IMDS".into()),
            record: None,
        },
    };
    Status {
        schema: SCHEMA,
        drover_version: env!("CARGO_PKG_VERSION").to_string(),
        config: config.path.display().to_string(),
        state_dir: state.path().display().to_string(),
        instance: instance_part(identity),
        registration,
        rancher,
        agent_container,
        sources: sources_part(config),
        take_out,
        boot_failure,
        last_sweep,
    }
}

/// A record of the state dir, read only: a missing file (or state dir) is `none`.
fn read_record<T: serde::de::DeserializeOwned>(state: &StateDir, name: &str) -> RecordPart<T> {
    match state.read_json::<T>(name) {
        Ok(Some(record)) => RecordPart {
            status: Seen::Recorded,
            detail: None,
            record: Some(record),
        },
        Ok(None) => RecordPart {
            status: Seen::None,
            detail: None,
            record: None,
        },
        Err(StateError { path, detail }) => RecordPart {
            status: Seen::Unreadable,
            detail: Some(format!("{}: {detail}", path.display())),
            record: None,
        },
    }
}

async fn read_identity() -> Result<InstanceIdentity, String> {
    match tokio::time::timeout(IMDS_BOUND, Imds::from_env().identity(IMDS_RETRIES)).await {
        Ok(Ok(id)) => Ok(id),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "IMDS gave no answer within {}",
            crate::retry::rounded(IMDS_BOUND)
        )),
    }
}

fn instance_part(identity: Result<InstanceIdentity, String>) -> InstancePart {
    match identity {
        Ok(id) => InstancePart {
            status: Seen::Ok,
            detail: None,
            instance_id: Some(id.instance_id),
            instance_type: Some(id.instance_type),
            availability_zone: Some(id.availability_zone),
            region: Some(id.region),
            autoscaling_group: id.autoscaling_group,
            target_lifecycle_state: id.target_lifecycle_state,
        },
        Err(why) => InstancePart {
            status: Seen::Unreachable,
            detail: Some(why),
            instance_id: None,
            instance_type: None,
            availability_zone: None,
            region: None,
            autoscaling_group: None,
            target_lifecycle_state: None,
        },
    }
}

/// The secret key read and the client connected (for `auto`, the server asked which API
/// it has), once, before `deadline`.
async fn connect_rancher(config: &Config, deadline: Instant) -> Result<RancherClient, String> {
    let connect = async {
        let key = super::rancher_key_reader(config)
            .read(deadline)
            .await
            .map_err(|e| e.to_string())?;
        RancherClient::connect(&config.rancher, key)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout_at(deadline, connect).await {
        Ok(result) => result,
        Err(_) => Err(no_answer(RANCHER_BOUND)),
    }
}

fn no_answer(bound: Duration) -> String {
    format!("no answer within {}", crate::retry::rounded(bound))
}

/// The `[rancher]` settings the part shows, with nothing read yet.
fn rancher_settings(config: &Config) -> RancherPart {
    RancherPart {
        status: Seen::Ok,
        detail: None,
        url: config.rancher.url.to_string(),
        project_id: config.rancher.project_id.clone(),
        api: None,
        hosts: Vec::new(),
    }
}

/// The hosts labelled with `instance_id`, as Rancher shows them now.
async fn rancher_hosts(
    config: &Config,
    client: Result<RancherClient, String>,
    instance_id: &str,
    registered_host: Option<&str>,
    deadline: Instant,
) -> RancherPart {
    let settings = rancher_settings(config);
    let unreachable = |why: String, api: Option<ResolvedApi>| RancherPart {
        status: Seen::Unreachable,
        detail: Some(why),
        api: api.map(|a| a.path().to_string()),
        ..rancher_settings(config)
    };
    let client = match client {
        Ok(c) => c,
        Err(why) => return unreachable(why, None),
    };
    let api = client.api();
    let listed: Result<Result<Vec<Host>, RancherError>, _> =
        tokio::time::timeout_at(deadline, client.find_hosts_by_instance(instance_id)).await;
    match listed {
        Ok(Ok(hosts)) => RancherPart {
            api: Some(api.path().to_string()),
            hosts: hosts
                .iter()
                .map(|h| host_view(h, api, registered_host))
                .collect(),
            ..settings
        },
        Ok(Err(e)) => unreachable(e.to_string(), Some(api)),
        Err(_) => unreachable(no_answer(RANCHER_BOUND), Some(api)),
    }
}

fn host_view(h: &Host, api: ResolvedApi, registered_host: Option<&str>) -> HostView {
    HostView {
        id: h.id.clone(),
        hostname: h.hostname.clone().or_else(|| h.name.clone()),
        state: h.state.clone(),
        agent_state: h.agent_state.clone(),
        agent: h.agent_contact(api).as_str().to_string(),
        agent_ip: h.agent_ip_address.clone(),
        registered: registered_host == Some(h.id.as_str()),
    }
}

async fn read_agent_container() -> AgentPart {
    let settings = DockerSettings::from_env();
    let read = async {
        let (docker, engine) = AgentDocker::probe(&settings)
            .await
            .map_err(|e| e.to_string())?;
        let container = docker.agent_container().await.map_err(|e| e.to_string())?;
        Ok::<_, String>((engine, container))
    };
    let part = |status, detail, engine, container: Option<ContainerInfo>| AgentPart {
        status,
        detail,
        docker_host: settings.host.clone(),
        engine,
        container: container.map(|c| ContainerView {
            running: c.is_running(),
            id: c.id,
            name: c.name,
            image: c.image,
            state: c.state,
        }),
    };
    match tokio::time::timeout(DOCKER_BOUND, read).await {
        Ok(Ok((engine, container))) => part(Seen::Ok, None, Some(engine), container),
        Ok(Err(why)) => part(Seen::Unreachable, Some(why), None, None),
        Err(_) => part(Seen::Unreachable, Some(no_answer(DOCKER_BOUND)), None, None),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn sources_part(config: &Config) -> SourcesPart {
    let l = &config.lifecycle;
    let r = &config.reaper;
    SourcesPart {
        queue_url: l.queue_url.clone(),
        hook_name: l.hook_name.clone(),
        imds_poll_ms: l.imds_poll.map(millis),
        on_sigterm: l.on_sigterm.as_str().to_string(),
        handle_peers: l.handle_peers,
        reaper: ReaperView {
            enabled: r.enabled,
            interval_ms: millis(r.interval),
            max_per_sweep: r.max_per_sweep,
            dry_run: r.dry_run,
        },
    }
}

// ---------------------------------------------------------------------------------------
// Text for people: one block per part, its name in the first column.

/// Width of the part's name column.
const NAME_WIDTH: usize = 13;

fn block(out: &mut String, name: &str, lines: Vec<String>) {
    for (i, line) in lines.iter().enumerate() {
        let shown = if i == 0 { name } else { "" };
        out.push_str(&format!("{shown:<NAME_WIDTH$} {line}\n"));
    }
}

fn or_dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

fn list_or_dash(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(", ")
    }
}

/// A part that was not read: its status word, and why.
fn not_read(status: Seen, detail: &Option<String>) -> String {
    match detail {
        Some(why) => format!("{}: {why}", status.as_str()),
        None => status.as_str().to_string(),
    }
}

fn ms(v: u64) -> String {
    humantime::format_duration(Duration::from_millis(v)).to_string()
}

/// The status as people read it.
pub fn render_text(s: &Status) -> String {
    let mut out = String::new();
    let i = &s.instance;
    block(
        &mut out,
        "instance",
        match i.status {
            Seen::Ok => vec![
                format!(
                    "{} ({}, {}, region {})",
                    or_dash(&i.instance_id),
                    or_dash(&i.instance_type),
                    or_dash(&i.availability_zone),
                    or_dash(&i.region)
                ),
                format!(
                    "group {}, target lifecycle state {}",
                    i.autoscaling_group.as_deref().unwrap_or("unknown to IMDS"),
                    i.target_lifecycle_state.as_deref().unwrap_or("not set yet")
                ),
            ],
            other => vec![not_read(other, &i.detail)],
        },
    );

    let r = &s.registration;
    let mut lines = match &r.record {
        Some(reg) => vec![
            format!("host {} for {}", reg.host_id, reg.instance_id),
            format!(
                "project {} of {}, registered {}",
                reg.project_id, reg.rancher_url, reg.registered_at
            ),
        ],
        None => vec![not_read(r.status, &r.detail)],
    };
    lines.push(format!("state dir {}", s.state_dir));
    block(&mut out, "registration", lines);

    let rn = &s.rancher;
    let mut lines = vec![format!(
        "{} API {}, project {}",
        rn.url,
        rn.api.as_deref().unwrap_or("?"),
        rn.project_id
    )];
    match rn.status {
        Seen::Ok if rn.hosts.is_empty() => lines.push(format!(
            "no host labelled aws.instance_id={}",
            or_dash(&i.instance_id)
        )),
        Seen::Ok => lines.extend(rn.hosts.iter().map(|h| {
            format!(
                "{:<8} {}, agent {} (agentState {}), {} {}{}",
                h.id,
                h.state,
                h.agent,
                h.agent_state.as_deref().unwrap_or("-"),
                or_dash(&h.hostname),
                or_dash(&h.agent_ip),
                if h.registered { " (registered)" } else { "" }
            )
        })),
        other => lines.push(not_read(other, &rn.detail)),
    }
    block(&mut out, "rancher", lines);

    let a = &s.agent_container;
    let lines = match (a.status, &a.container) {
        (Seen::Ok, Some(c)) => vec![
            format!(
                "{} {}{}, image {}",
                c.name,
                c.state,
                if c.running { "" } else { " (not running)" },
                c.image
            ),
            format!("{} at {}", or_dash(&a.engine), a.docker_host),
        ],
        (Seen::Ok, None) => vec![
            "no rancher-agent container".into(),
            format!("{} at {}", or_dash(&a.engine), a.docker_host),
        ],
        (other, _) => vec![format!(
            "{} at {}",
            not_read(other, &a.detail),
            a.docker_host
        )],
    };
    block(&mut out, "agent", lines);

    let w = &s.sources;
    block(
        &mut out,
        "watching",
        vec![
            format!(
                "queue {}; hook {}",
                w.queue_url.as_deref().unwrap_or("none"),
                w.hook_name.as_deref().unwrap_or("the group's")
            ),
            format!(
                "IMDS {}; SIGTERM {}; peers {}",
                w.imds_poll_ms
                    .map(|v| format!("every {}", ms(v)))
                    .unwrap_or_else(|| "not polled".into()),
                w.on_sigterm,
                if w.handle_peers {
                    "handled"
                } else {
                    "not handled"
                }
            ),
            if w.reaper.enabled {
                format!(
                    "reaper on, about every {}, at most {} take-out(s) a sweep{}",
                    ms(w.reaper.interval_ms),
                    w.reaper.max_per_sweep,
                    if w.reaper.dry_run { ", dry run" } else { "" }
                )
            } else {
                "reaper off".into()
            },
        ],
    );

    let t = &s.take_out;
    let lines = match &t.record {
        Some(rec) => {
            let mut lines = vec![
                format!(
                    "{} via {}, started {}: {}, {}{}",
                    rec.instance_id,
                    rec.source,
                    rec.started_at,
                    if rec.taken_out {
                        "taken out"
                    } else {
                        "not taken out"
                    },
                    if rec.hook_completed {
                        "hook completed"
                    } else {
                        "hook not completed"
                    },
                    if rec.paged { ", paged" } else { "" }
                ),
                format!(
                    "host {}{}, group {}, hook {}",
                    or_dash(&rec.host_id),
                    if rec.other_hosts.is_empty() {
                        String::new()
                    } else {
                        format!(" (also {})", rec.other_hosts.join(", "))
                    },
                    or_dash(&rec.group),
                    or_dash(&rec.hook)
                ),
            ];
            lines.extend(
                rec.timeline
                    .iter()
                    .map(|e| format!("{}  {}", e.at, e.event)),
            );
            lines
        }
        None => vec![not_read(t.status, &t.detail)],
    };
    block(&mut out, "take-out", lines);

    let b = &s.boot_failure;
    let lines = match &b.record {
        Some(f) => vec![
            format!(
                "{} failed at {} since {}{}",
                f.instance_id,
                f.failed_step,
                f.since,
                if f.paged { ", paged" } else { "" }
            ),
            f.error.clone(),
        ],
        None => vec![not_read(b.status, &b.detail)],
    };
    block(&mut out, "boot-failure", lines);

    let sw = &s.last_sweep;
    let lines = match &sw.record {
        Some(rec) => {
            let mut lines = vec![format!(
                "{} to {} by {}{}",
                rec.started_at,
                rec.finished_at,
                rec.instance_id,
                if rec.dry_run { ", dry run" } else { "" }
            )];
            match &rec.refused {
                Some(why) => lines.push(format!("refused: {why}")),
                None => {
                    lines.push(format!(
                        "{} host(s) listed, {} labelled ({} connected); reaped {}; failed {}; deferred {}",
                        rec.hosts_listed,
                        rec.labelled_hosts,
                        rec.connected_labelled_hosts,
                        list_or_dash(&rec.reaped),
                        list_or_dash(&rec.failed),
                        list_or_dash(&rec.deferred)
                    ));
                    lines.extend(rec.considered.iter().map(|h| {
                        format!(
                            "{:<14} {:<8} {:<21} agent {}{}",
                            h.decision,
                            h.host_id,
                            h.instance_id.as_deref().unwrap_or("-"),
                            h.agent,
                            h.autoscaling
                                .as_deref()
                                .map(|a| format!("; {a}"))
                                .unwrap_or_default()
                        )
                    }));
                    if !rec.warm_pool_completed.is_empty() {
                        lines.push(format!(
                            "warm pool completed {}",
                            rec.warm_pool_completed.join(", ")
                        ));
                    }
                    if let Some(e) = &rec.warm_pool_error {
                        lines.push(format!("warm pool not read: {e}"));
                    }
                    if rec.paged {
                        lines.push("paged: more candidates than reaper.max_per_sweep".into());
                    }
                }
            }
            lines
        }
        None => vec![not_read(sw.status, &sw.detail)],
    };
    block(&mut out, "last-sweep", lines);
    out
}

#[cfg(test)]
mod tests;
