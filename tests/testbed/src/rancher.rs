//! A stand-in for the Rancher 1.x (Cattle) API, with a watcher that plays the rancher/agent.
//!
//! The API covers registration tokens, hosts and the actions that take a host out, under
//! `/v1` and `/v2-beta`, following `shared/reference.md` to the letter: collections,
//! pagination, filters, error bodies, the action table, v2-beta's `state = agentState` and
//! asynchronous transitions. Transitions are computed lazily from `Instant`s whenever the
//! state is read, so they really take their time without timers, and `stick` can hold a
//! host in a transitioning state.
//!
//! Hosts carry containers a test puts on them ([`RancherServer::add_container`]), listed by
//! the host's `instances` link with their `system` flag. Evacuation is v2-beta's, as in
//! reference.md: `?action=evacuate` only records a `host.evacuate` external host event (as
//! does `POST .../externalhostevents`), whose process then deactivates the host and stops
//! and removes its non-system containers one after the other, each taking
//! `container_delay` to stop and again to go; the event goes `creating` → `created` once
//! they are all gone, after the host has turned `inactive`. A host removed or purged while
//! non-system containers are still on it is recorded
//! ([`RancherServer::removed_with_containers`]), so that a test sees a take-out that did
//! not wait for them.
//!
//! The watcher ([`RancherServer::watch_docker`]) polls a test's Docker engine; when a
//! bootstrap container (first argument `<server>/v1/scripts/<token>`) starts, it does what
//! the real server and agent would: register the engine's host (or give it back), replace
//! the `rancher-agent` container, and later report the host `disconnected` while that
//! container does not run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State as Shared;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummaryStateEnum, HostConfig,
    RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions,
};
use bollard::Docker;
use rand::Rng;
use serde_json::{json, Map, Value};
use tokio::task::JoinHandle;

use crate::http;

/// How the stand-in behaves; `Default` is a Rancher 1.6 server with one environment.
#[derive(Debug, Clone)]
pub struct RancherOptions {
    /// The environment (project) the keys are bound to.
    pub project_id: String,
    pub access_key: String,
    pub secret_key: String,
    /// `false`: an old server with only `/v1` (`/v2-beta` answers 404).
    pub v2beta: bool,
    /// Page size when the client gives no `limit`.
    pub page_size: usize,
    /// A created registration token goes `registering` → `active` after this.
    pub token_create_delay: Duration,
    /// A registered host goes `registering` → `active` after this.
    pub register_delay: Duration,
    /// Duration of `deactivating`, `activating`, `removing` and `purging`.
    pub transition_delay: Duration,
    /// How long a container takes to stop, and again to be removed, when an evacuation
    /// takes it off its host (one after the other, as Cattle waits for each).
    pub container_delay: Duration,
    /// The image active tokens report.
    pub agent_image: String,
}

impl Default for RancherOptions {
    fn default() -> Self {
        RancherOptions {
            project_id: "1a5".to_string(),
            access_key: "DROVERTESTACCESS".to_string(),
            secret_key: "s3cr3t-DroverTestSecretKey-9f8e7d".to_string(),
            v2beta: true,
            page_size: 100,
            token_create_delay: Duration::from_secs(1),
            register_delay: Duration::from_secs(1),
            transition_delay: Duration::from_millis(500),
            container_delay: Duration::from_millis(500),
            agent_image: crate::docker::AGENT_IMAGE.to_string(),
        }
    }
}

/// A host put in place by a test: a ghost, a peer, a stale registration.
#[derive(Debug, Clone)]
pub struct HostSpec {
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    /// Raw (v1) state, e.g. `active`, `inactive`, `registering`.
    pub state: String,
    pub agent_state: Option<String>,
    pub agent_ip: String,
}

impl Default for HostSpec {
    fn default() -> Self {
        HostSpec {
            hostname: "ip-10-0-0-10".to_string(),
            labels: BTreeMap::new(),
            state: "active".to_string(),
            agent_state: None,
            agent_ip: "10.0.0.10".to_string(),
        }
    }
}

/// A host as the stand-in holds it.
#[derive(Debug, Clone)]
pub struct HostSnapshot {
    pub id: String,
    pub hostname: String,
    pub labels: BTreeMap<String, String>,
    /// Raw (v1) state.
    pub state: String,
    pub agent_state: Option<String>,
    pub agent_ip: String,
    /// Every raw state it went through, in order, starting with the first.
    pub history: Vec<String>,
}

/// A bootstrap container the watcher saw start, as inspected.
#[derive(Debug, Clone)]
pub struct BootstrapSeen {
    pub container_id: String,
    /// As given at creation (`Config.Image`).
    pub image: String,
    /// The arguments after the entrypoint; the first is the registration URL.
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub binds: Vec<String>,
    pub privileged: bool,
    pub auto_remove: bool,
    /// The host it registered as (or gave back), when it was accepted.
    pub host_id: Option<String>,
    /// Why the server and agent would not register it, when they would not.
    pub rejected: Option<String>,
}

/// A container put on a host by a test.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    /// A system container (network agent, health check, ...): evacuation leaves it.
    pub system: bool,
}

/// A container as the stand-in holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSnapshot {
    pub id: String,
    pub name: String,
    pub host_id: String,
    pub system: bool,
    pub state: String,
    /// Every state it went through, in order, starting with `running`.
    pub history: Vec<String>,
}

/// An external host event, as the stand-in holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEventSnapshot {
    pub id: String,
    pub event_type: String,
    pub host_id: String,
    pub delete_host: bool,
    /// `creating`, then `created`.
    pub state: String,
    /// Recorded by `?action=evacuate` rather than created on the collection.
    pub by_action: bool,
}

/// A host taken out (`remove`, or `purge`) while non-system containers were still on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemovedWithContainers {
    pub host_id: String,
    /// `remove` (also for `DELETE`) or `purge`.
    pub action: String,
    /// The containers still there, by name.
    pub containers: Vec<String>,
}

/// The Rancher stand-in: serves until dropped; the handle reads and steers its state.
pub struct RancherServer {
    state: Arc<Mutex<State>>,
    faults: http::Faults,
    server: http::Server,
    watchers: Mutex<HashMap<PathBuf, JoinHandle<()>>>,
    /// The options as started (for the access key and project, which never change; the
    /// secret key can, see [`RancherServer::set_secret_key`]).
    keys: RancherOptions,
}

// ---------------------------------------------------------------------------------------
// State

struct Host {
    num: u64,
    id: String,
    hostname: String,
    labels: BTreeMap<String, String>,
    state: String,
    agent_state: Option<String>,
    /// The agent stopped answering pings ([`RancherServer::lose_agent`]).
    agent_lost: Option<AgentLoss>,
    agent_ip: String,
    uuid: String,
    created_ms: u64,
    removed_ms: Option<u64>,
    history: Vec<String>,
    /// The state a transitioning host lands in, and when.
    pending: Option<(String, Instant)>,
    /// The Docker engine (its `docker info` ID) whose agent registered this host.
    engine: Option<String>,
    /// Whether the watcher last saw the `rancher-agent` container running.
    agent_seen_running: Option<bool>,
    /// When it last turned `active` (a scheduled landing counts from its due time).
    active_at: Option<Instant>,
    /// Purge once `removed` (an evacuation event with `deleteHost`).
    purge_when_removed: bool,
}

struct Token {
    num: u64,
    id: String,
    uuid: String,
    token: String,
    state: String,
    active_at: Instant,
    created_ms: u64,
}

/// The one external host event type there is.
const EVACUATE_EVENT: &str = "host.evacuate";

/// When an evacuation takes a container off its host: it is `stopping` from `start`,
/// `stopped` (and at once `removing`) at `stopped`, `removed` at `removed`.
#[derive(Clone, Copy)]
struct Evacuation {
    start: Instant,
    stopped: Instant,
    removed: Instant,
}

struct Container {
    num: u64,
    id: String,
    uuid: String,
    name: String,
    host_id: String,
    system: bool,
    state: String,
    history: Vec<String>,
    created_ms: u64,
    removed_ms: Option<u64>,
    /// When the test put it there.
    added: Instant,
    /// Set once an evacuation has planned its stop and removal.
    evacuation: Option<Evacuation>,
}

struct HostEvent {
    num: u64,
    id: String,
    uuid: String,
    event_type: String,
    host_id: String,
    delete_host: bool,
    state: String,
    created_ms: u64,
    by_action: bool,
    /// The process has begun (on the first look after the create answered).
    started: bool,
    /// When the process is free to take the next container: the last one's removal.
    clock: Instant,
}

struct State {
    opts: RancherOptions,
    /// `http://127.0.0.1:<port>`.
    base: String,
    hosts: Vec<Host>,
    tokens: Vec<Token>,
    containers: Vec<Container>,
    events: Vec<HostEvent>,
    removed_with_containers: Vec<RemovedWithContainers>,
    next_host: u64,
    next_token: u64,
    next_container: u64,
    next_event: u64,
    tokens_created: usize,
    /// Host id → the transitioning state it is held in.
    stuck: HashMap<String, String>,
    bootstraps: Vec<BootstrapSeen>,
}

/// How long the server takes to see a lost agent `reconnecting`: 6 missed pings 5 s apart.
pub const AGENT_RECONNECTING_AFTER: Duration = Duration::from_secs(30);
/// How long after that it gives up and shows the agent `disconnected`.
pub const AGENT_DISCONNECTED_AFTER: Duration = Duration::from_secs(180);

/// When a lost agent's host is seen `reconnecting`, and then `disconnected`.
#[derive(Debug, Clone, Copy)]
struct AgentLoss {
    reconnecting_at: Instant,
    disconnected_at: Instant,
}

impl State {
    /// The agent state of every host whose agent was lost, as far as the time has come.
    fn land_agent_losses(&mut self) {
        let now = Instant::now();
        for host in self.hosts.iter_mut() {
            let Some(loss) = host.agent_lost else {
                continue;
            };
            let seen = if now >= loss.disconnected_at {
                "disconnected"
            } else if now >= loss.reconnecting_at {
                "reconnecting"
            } else {
                continue;
            };
            host.agent_state = Some(seen.to_string());
        }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where a transitioning state lands on its own, and after which delay.
fn completion(state: &str, opts: &RancherOptions) -> Option<(&'static str, Duration)> {
    match state {
        "registering" => Some(("active", opts.register_delay)),
        "activating" => Some(("active", opts.transition_delay)),
        "deactivating" => Some(("inactive", opts.transition_delay)),
        "removing" => Some(("removed", opts.transition_delay)),
        "purging" => Some(("purged", opts.transition_delay)),
        "erroring" => Some(("error", opts.transition_delay)),
        _ => None,
    }
}

/// Gone from lists (and from the agent's point of view).
fn is_gone(state: &str) -> bool {
    matches!(state, "removing" | "removed" | "purging" | "purged")
}

/// Hidden from collections: Cattle sets `removed` once the remove process is done.
fn is_removed(state: &str) -> bool {
    matches!(state, "removed" | "purging" | "purged")
}

impl Host {
    /// Puts the host in `state`, recording it, and schedules where a transitioning state
    /// lands.
    fn enter(&mut self, state: &str, opts: &RancherOptions) {
        if self.state != state || self.history.is_empty() {
            self.history.push(state.to_string());
        }
        self.state = state.to_string();
        if state == "removed" && self.removed_ms.is_none() {
            self.removed_ms = Some(now_ms());
        }
        self.pending =
            completion(state, opts).map(|(to, delay)| (to.to_string(), Instant::now() + delay));
    }

    fn snapshot(&self) -> HostSnapshot {
        HostSnapshot {
            id: self.id.clone(),
            hostname: self.hostname.clone(),
            labels: self.labels.clone(),
            state: self.state.clone(),
            agent_state: self.agent_state.clone(),
            agent_ip: self.agent_ip.clone(),
            history: self.history.clone(),
        }
    }
}

impl Container {
    fn enter(&mut self, state: &str) {
        self.history.push(state.to_string());
        self.state = state.to_string();
        if state == "removed" {
            self.removed_ms = Some(now_ms());
        }
    }

    fn snapshot(&self) -> ContainerSnapshot {
        ContainerSnapshot {
            id: self.id.clone(),
            name: self.name.clone(),
            host_id: self.host_id.clone(),
            system: self.system,
            state: self.state.clone(),
            history: self.history.clone(),
        }
    }
}

/// How far along its way out a container is.
fn container_stage(state: &str) -> u8 {
    match state {
        "stopping" => 1,
        "stopped" => 2,
        "removing" => 3,
        "removed" | "purged" => 4,
        _ => 0,
    }
}

impl HostEvent {
    fn snapshot(&self) -> HostEventSnapshot {
        HostEventSnapshot {
            id: self.id.clone(),
            event_type: self.event_type.clone(),
            host_id: self.host_id.clone(),
            delete_host: self.delete_host,
            state: self.state.clone(),
            by_action: self.by_action,
        }
    }
}

impl State {
    /// Lands every transition whose time has come (unless the host is stuck there), and
    /// takes every evacuation as far as the time allows: one move can allow another (a
    /// container removed lets the next one go), so it goes round until nothing moves.
    fn advance(&mut self) {
        // Each round moves something forward for good, so this bound is never reached; it
        // only keeps a mistake here from hanging every test.
        for _ in 0..10_000 {
            if !self.advance_once() {
                break;
            }
        }
    }

    fn advance_once(&mut self) -> bool {
        let now = Instant::now();
        let mut moved = false;
        let State {
            hosts,
            stuck,
            opts,
            tokens,
            containers,
            events,
            ..
        } = self;
        for host in hosts.iter_mut() {
            let Some((to, at)) = host.pending.clone() else {
                continue;
            };
            if now < at || stuck.get(&host.id) == Some(&host.state) {
                continue;
            }
            host.enter(&to, opts);
            moved = true;
            if to == "active" {
                host.active_at = Some(at);
            }
            if to == "removed" && host.purge_when_removed {
                host.enter("purging", opts);
            }
        }
        for token in tokens.iter_mut() {
            if token.state == "registering" && now >= token.active_at {
                token.state = "active".to_string();
            }
        }
        for c in containers.iter_mut() {
            let Some(plan) = c.evacuation else {
                continue;
            };
            let stages = [
                ("stopping", plan.start),
                ("stopped", plan.stopped),
                ("removing", plan.stopped),
                ("removed", plan.removed),
            ];
            for (state, at) in stages {
                if now >= at && container_stage(&c.state) < container_stage(state) {
                    c.enter(state);
                    moved = true;
                }
            }
        }
        for e in events.iter_mut().filter(|e| e.state == "creating") {
            let Some(host) = hosts.iter_mut().find(|h| h.id == e.host_id) else {
                continue;
            };
            if !e.started {
                // The create (or the action) answered first, with the host unchanged.
                e.started = true;
                e.clock = now;
                moved = true;
                if matches!(host.state.as_str(), "active" | "activating" | "registering") {
                    host.enter("deactivating", opts);
                }
                continue;
            }
            // The host is deactivated first; its containers go once it is inactive.
            if host.state == "deactivating" {
                if let Some((_, at)) = &host.pending {
                    e.clock = e.clock.max(*at);
                }
                continue;
            }
            let host_id = e.host_id.clone();
            let left =
                |c: &Container| c.host_id == host_id && !c.system && container_stage(&c.state) < 4;
            // One after the other: the next waits for the one under way.
            if containers.iter().any(|c| left(c) && c.evacuation.is_some()) {
                continue;
            }
            match containers.iter_mut().find(|c| left(c)) {
                Some(c) => {
                    let start = e.clock.max(c.added);
                    let stopped = start + opts.container_delay;
                    let removed = stopped + opts.container_delay;
                    c.evacuation = Some(Evacuation {
                        start,
                        stopped,
                        removed,
                    });
                    e.clock = removed;
                    moved = true;
                }
                None => {
                    e.state = "created".to_string();
                    moved = true;
                    if e.delete_host && matches!(host.state.as_str(), "inactive" | "error") {
                        host.enter("removing", opts);
                        host.purge_when_removed = true;
                    }
                }
            }
        }
        moved
    }

    /// Non-system containers on `host_id` that are not gone yet, by name.
    fn containers_left(&self, host_id: &str) -> Vec<String> {
        self.containers
            .iter()
            .filter(|c| c.host_id == host_id && !c.system && container_stage(&c.state) < 4)
            .map(|c| c.name.clone())
            .collect()
    }

    fn new_container(&mut self, host_id: &str, spec: ContainerSpec) -> String {
        self.next_container += 1;
        let num = self.next_container;
        let container = Container {
            num,
            id: format!("1i{num}"),
            uuid: random_uuid(),
            name: spec.name,
            host_id: host_id.to_string(),
            system: spec.system,
            state: "running".to_string(),
            history: vec!["running".to_string()],
            created_ms: now_ms(),
            removed_ms: None,
            added: Instant::now(),
            evacuation: None,
        };
        let id = container.id.clone();
        self.containers.push(container);
        id
    }

    fn new_event(&mut self, host_id: &str, delete_host: bool, by_action: bool) -> String {
        self.next_event += 1;
        let num = self.next_event;
        let event = HostEvent {
            num,
            id: format!("1ee{num}"),
            uuid: random_uuid(),
            event_type: EVACUATE_EVENT.to_string(),
            host_id: host_id.to_string(),
            delete_host,
            state: "creating".to_string(),
            created_ms: now_ms(),
            by_action,
            started: false,
            clock: Instant::now(),
        };
        let id = event.id.clone();
        self.events.push(event);
        id
    }

    fn new_host(&mut self, spec: HostSpec, engine: Option<String>) -> String {
        self.next_host += 1;
        let num = self.next_host;
        let mut host = Host {
            num,
            id: format!("1h{num}"),
            hostname: spec.hostname,
            labels: spec.labels,
            state: String::new(),
            agent_state: spec.agent_state,
            agent_lost: None,
            agent_ip: spec.agent_ip,
            uuid: random_uuid(),
            created_ms: now_ms(),
            removed_ms: None,
            history: Vec::new(),
            pending: None,
            engine,
            agent_seen_running: None,
            active_at: None,
            purge_when_removed: false,
        };
        host.enter(&spec.state, &self.opts);
        let id = host.id.clone();
        self.hosts.push(host);
        id
    }

    fn new_token(&mut self, active: bool) -> String {
        self.next_token += 1;
        let num = self.next_token;
        let now = Instant::now();
        let token = Token {
            num,
            id: format!("1c{num}"),
            uuid: random_uuid(),
            token: random_string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 30),
            state: if active { "active" } else { "registering" }.to_string(),
            active_at: if active {
                now
            } else {
                now + self.opts.token_create_delay
            },
            created_ms: now_ms(),
        };
        let id = token.id.clone();
        self.tokens.push(token);
        id
    }

    fn host_mut(&mut self, id: &str) -> Option<&mut Host> {
        self.hosts.iter_mut().find(|h| h.id == id)
    }
}

// ---------------------------------------------------------------------------------------
// The handle

impl RancherServer {
    /// Starts serving on `127.0.0.1:<random port>`.
    pub async fn start(opts: RancherOptions) -> RancherServer {
        let keys = opts.clone();
        let state = Arc::new(Mutex::new(State {
            opts,
            base: String::new(),
            hosts: Vec::new(),
            tokens: Vec::new(),
            containers: Vec::new(),
            events: Vec::new(),
            removed_with_containers: Vec::new(),
            next_host: 0,
            next_token: 0,
            next_container: 0,
            next_event: 0,
            tokens_created: 0,
            stuck: HashMap::new(),
            bootstraps: Vec::new(),
        }));
        let faults = http::Faults::default();
        let app = App {
            state: state.clone(),
        };
        let router = Router::new().fallback(handle).with_state(app);
        let server = http::Server::start(faults.serve(router, render))
            .await
            .expect("binding a loopback port for the Rancher stand-in");
        // Links are absolute; no request can arrive before `start` returns the URL.
        lock(&state).base = server.url();
        RancherServer {
            state,
            faults,
            server,
            watchers: Mutex::new(HashMap::new()),
            keys,
        }
    }

    /// The server's base URL without `/v1` (what `rancher.url` is set to).
    pub fn addr(&self) -> std::net::SocketAddr {
        self.server.addr()
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn access_key(&self) -> &str {
        &self.keys.access_key
    }

    /// The secret key the server accepts now.
    pub fn secret_key(&self) -> String {
        lock(&self.state).opts.secret_key.clone()
    }

    /// From now on only `key` is accepted as the secret key, as after rotating the API
    /// key's secret in Rancher: requests with the old one get 401.
    pub fn set_secret_key(&self, key: &str) {
        lock(&self.state).opts.secret_key = key.to_string();
    }

    pub fn project_id(&self) -> &str {
        &self.keys.project_id
    }

    fn state(&self) -> MutexGuard<'_, State> {
        let mut state = lock(&self.state);
        state.advance();
        state.land_agent_losses();
        state
    }

    /// A token that exists before drover runs; returns its id. `active = false`: one still
    /// `registering`, active after `token_create_delay`.
    pub fn add_registration_token(&self, active: bool) -> String {
        self.state().new_token(active)
    }

    /// The registration URL of a token, once it is active.
    pub fn registration_url(&self, token_id: &str) -> Option<String> {
        let state = self.state();
        let token = state
            .tokens
            .iter()
            .find(|t| t.id == token_id && t.state == "active")?;
        Some(format!("{}/v1/scripts/{}", state.base, token.token))
    }

    /// Adds a host (a ghost, a peer); returns its id, e.g. `1h7`. A transitioning state
    /// (`registering`, `removing`, ...) lands on its own as if an action had started it.
    pub fn add_host(&self, spec: HostSpec) -> String {
        self.state().new_host(spec, None)
    }

    /// Every host, removed and purged ones included, in creation order.
    pub fn hosts(&self) -> Vec<HostSnapshot> {
        self.state().hosts.iter().map(Host::snapshot).collect()
    }

    pub fn host(&self, id: &str) -> Option<HostSnapshot> {
        self.state()
            .hosts
            .iter()
            .find(|h| h.id == id)
            .map(Host::snapshot)
    }

    /// Sets a host's raw state and agent state. A transitioning state lands on its own
    /// (use [`stick`](Self::stick) to hold it).
    pub fn set_host_state(&self, id: &str, state: &str, agent_state: Option<&str>) {
        let mut guard = self.state();
        let opts = guard.opts.clone();
        if let Some(host) = guard.host_mut(id) {
            host.enter(state, &opts);
            host.agent_state = agent_state.map(str::to_string);
            host.agent_lost = None;
        }
    }

    /// The host's agent stops answering the server's pings from now on (its machine died,
    /// or a partition cut it off): `agentState` turns `reconnecting` after
    /// `reconnecting_after` (the server pings every 5 s and gives up after 6 missed pings:
    /// [`AGENT_RECONNECTING_AFTER`]), then `disconnected` after `disconnected_after` more
    /// ([`AGENT_DISCONNECTED_AFTER`]), where it stays. The host's own `state` is unchanged;
    /// v2-beta shows the agent's state in its place while the host is active, v1 only in
    /// `agentState`.
    pub fn lose_agent(&self, id: &str, reconnecting_after: Duration, disconnected_after: Duration) {
        let now = Instant::now();
        if let Some(host) = self.state().host_mut(id) {
            host.agent_lost = Some(AgentLoss {
                reconnecting_at: now + reconnecting_after,
                disconnected_at: now + reconnecting_after + disconnected_after,
            });
        }
        self.state().land_agent_losses();
    }

    /// The host's agent answers again: connected.
    pub fn agent_back(&self, id: &str) {
        if let Some(host) = self.state().host_mut(id) {
            host.agent_lost = None;
            host.agent_state = None;
        }
    }

    /// Puts a running container on host `host_id` (as the scheduler would); returns its id,
    /// e.g. `1i3`.
    pub fn add_container(&self, host_id: &str, spec: ContainerSpec) -> String {
        self.state().new_container(host_id, spec)
    }

    /// Every container of host `host_id`, removed ones included, in creation order.
    pub fn containers(&self, host_id: &str) -> Vec<ContainerSnapshot> {
        self.state()
            .containers
            .iter()
            .filter(|c| c.host_id == host_id)
            .map(Container::snapshot)
            .collect()
    }

    /// Every external host event, in creation order.
    pub fn host_events(&self) -> Vec<HostEventSnapshot> {
        self.state()
            .events
            .iter()
            .map(HostEvent::snapshot)
            .collect()
    }

    /// Every `remove` (or `DELETE`) and `purge` accepted for a host that still had
    /// non-system containers on it: empty when every take-out waited for its containers.
    pub fn removed_with_containers(&self) -> Vec<RemovedWithContainers> {
        self.state().removed_with_containers.clone()
    }

    /// When host `id` last turned `active`: the moment its registration landed, however
    /// late a request noticed it.
    pub fn active_at(&self, id: &str) -> Option<Instant> {
        let mut state = lock(&self.state);
        state.advance();
        state
            .hosts
            .iter()
            .find(|h| h.id == id)
            .and_then(|h| h.active_at)
    }

    /// Registration tokens created by `POST` on the collection.
    pub fn tokens_created(&self) -> usize {
        self.state().tokens_created
    }

    /// Injected faults, latency and the request log (see [`http::fault_api!`]): an
    /// injected fault answers with Rancher's error body, before authentication.
    pub fn faults(&self) -> &http::Faults {
        &self.faults
    }

    /// Holds the host in `transitioning_state` (e.g. `removing`) once it is there, until
    /// [`unstick`](Self::unstick).
    pub fn stick(&self, id: &str, transitioning_state: &str) {
        self.state()
            .stuck
            .insert(id.to_string(), transitioning_state.to_string());
    }

    /// Lets the host go on; a transition already overdue lands at once.
    pub fn unstick(&self, id: &str) {
        self.state().stuck.remove(id);
    }

    /// Starts watching the engine at `engine_socket` for bootstrap containers (see the
    /// module docs); idempotent. The engine may come up later or restart. Must be called
    /// within a tokio runtime.
    pub fn watch_docker(&self, engine_socket: &Path) {
        let mut watchers = self.watchers.lock().unwrap_or_else(|e| e.into_inner());
        if watchers
            .get(engine_socket)
            .is_some_and(|task| !task.is_finished())
        {
            return;
        }
        let task = tokio::spawn(watch(
            Arc::downgrade(&self.state),
            engine_socket.to_path_buf(),
        ));
        watchers.insert(engine_socket.to_path_buf(), task);
    }

    /// [`watch_docker`](Self::watch_docker) on a test engine.
    pub fn watch(&self, engine: &crate::docker::DockerEngine) {
        self.watch_docker(engine.socket());
    }

    /// Bootstrap containers the watcher saw, in order.
    pub fn bootstraps_seen(&self) -> Vec<BootstrapSeen> {
        self.state().bootstraps.clone()
    }
}

http::fault_api!(RancherServer);

impl Drop for RancherServer {
    fn drop(&mut self) {
        let watchers = self.watchers.get_mut().unwrap_or_else(|e| e.into_inner());
        for (_, task) in watchers.drain() {
            task.abort();
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP

#[derive(Clone)]
struct App {
    state: Arc<Mutex<State>>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Api {
    V1,
    V2Beta,
}

impl Api {
    fn root(self) -> &'static str {
        match self {
            Api::V1 => "v1",
            Api::V2Beta => "v2-beta",
        }
    }
}

enum Body {
    Json(Value),
    Text(String),
}

struct Reply {
    status: u16,
    body: Body,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            body: Body::Json(body),
        }
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (content_type, text) = match self.body {
            Body::Json(value) => ("application/json; charset=utf-8", value.to_string()),
            Body::Text(text) => ("text/plain; charset=utf-8", text),
        };
        let mut response = (status, text).into_response();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    }
}

/// Rancher's error body for `status`.
fn error(status: u16) -> Reply {
    let (code, message, field) = match status {
        401 => ("Unauthorized", json!("Unauthorized"), Value::Null),
        403 => ("Forbidden", json!("Forbidden"), Value::Null),
        404 => ("NotFound", json!("Not Found"), Value::Null),
        405 => ("MethodNotAllowed", json!("Method not allowed"), Value::Null),
        409 => ("Conflict", json!("busy"), Value::Null),
        422 => ("ActionNotAvailable", Value::Null, json!("action")),
        429 => ("TooManyRequests", json!("Too Many Requests"), Value::Null),
        500 => ("ServerError", json!("Internal Server Error"), Value::Null),
        502 => ("BadGateway", json!("Bad Gateway"), Value::Null),
        503 => (
            "ServiceUnavailable",
            json!("Service Unavailable"),
            Value::Null,
        ),
        504 => ("GatewayTimeout", json!("Gateway Timeout"), Value::Null),
        _ => {
            let reason = StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Error");
            let code: String = reason.split_whitespace().collect();
            return error_with(status, &code, json!(reason), Value::Null);
        }
    };
    error_with(status, code, message, field)
}

/// An injected fault, as Rancher answers it: its error body for the status.
fn render(fault: http::Fault, _req: &http::Incoming<'_>) -> Response {
    let status = match fault {
        http::Fault::Status(status) => status,
        http::Fault::Throttling => 429,
        // Cattle's validation errors (ActionNotAvailable and the like) are 422s.
        http::Fault::ValidationError => 422,
    };
    error(status).into_response()
}

fn error_with(status: u16, code: &str, message: Value, field: Value) -> Reply {
    Reply::json(
        status,
        json!({
            "type": "error",
            "status": status,
            "code": code,
            "message": message,
            "fieldName": field,
        }),
    )
}

/// One request, as the routing code needs it.
struct Req<'a> {
    method: &'a Method,
    path: &'a str,
    query: &'a str,
    pairs: &'a [(String, String)],
    headers: &'a HeaderMap,
    body: &'a [u8],
}

impl Req<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

async fn handle(
    Shared(app): Shared<App>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or("").to_string();
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let reply = {
        let mut state = lock(&app.state);
        state.advance();
        state.land_agent_losses();
        // Rancher builds its links from the Host the client asked for, so that they work
        // through a proxy or a load balancer in front of it.
        let own_base = state.base.clone();
        if let Some(host) = headers.get("host").and_then(|h| h.to_str().ok()) {
            state.base = format!("http://{host}");
        }
        let reply = state.respond(&Req {
            method: &method,
            path: &path,
            query: &query,
            pairs: &pairs,
            headers: &headers,
            body: &body,
        });
        state.base = own_base;
        reply
    };
    reply.into_response()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hosts,
    Tokens,
    Events,
    Instances,
}

/// One filter condition from the query string.
struct Cond {
    field: String,
    modifier: &'static str,
    value: String,
}

/// Query parameters that are not filters.
const RESERVED: &[&str] = &[
    "limit",
    "marker",
    "sort",
    "order",
    "include",
    "projectId",
    "action",
    "_",
];

const MODIFIERS: &[(&str, &str)] = &[
    ("_ne", "ne"),
    ("_notnull", "notnull"),
    ("_null", "null"),
    ("_notlike", "notlike"),
    ("_like", "like"),
    ("_prefix", "prefix"),
];

/// What hosts can be filtered on (`hostname` and `labels` cannot).
const HOST_FILTERS: &[&str] = &["id", "state", "agentState", "name", "uuid", "kind"];

/// What registration tokens can be filtered on.
const TOKEN_FILTERS: &[&str] = &["id", "state", "name", "uuid", "kind"];

/// What external host events can be filtered on.
const EVENT_FILTERS: &[&str] = &["id", "state", "eventType", "hostId", "uuid", "kind"];

/// What containers can be filtered on.
const INSTANCE_FILTERS: &[&str] = &["id", "state", "name", "system", "uuid", "kind"];

/// An item of a collection: its number (for order and markers), the values filters look
/// at, and its JSON.
struct Item {
    num: u64,
    id: String,
    fields: Vec<(&'static str, Option<String>)>,
    json: Value,
}

/// The host actions, which states they are valid from, and the transitioning state they
/// start (none for `evacuate`, which answers 200 and leaves the host as it is).
const HOST_ACTIONS: &[(&str, &[&str], Option<&str>)] = &[
    ("activate", &["inactive"], Some("activating")),
    (
        "deactivate",
        &["active", "activating", "registering"],
        Some("deactivating"),
    ),
    ("evacuate", &["active", "inactive"], None),
    (
        "remove",
        &["inactive", "error", "erroring", "requested"],
        Some("removing"),
    ),
    ("purge", &["removed"], Some("purging")),
];

fn action_exists(api: Api, action: &str) -> bool {
    HOST_ACTIONS.iter().any(|(name, _, _)| *name == action)
        && !(api == Api::V1 && action == "evacuate")
}

fn valid_actions(api: Api, state: &str) -> Vec<&'static str> {
    HOST_ACTIONS
        .iter()
        .filter(|(name, from, _)| action_exists(api, name) && from.contains(&state))
        .map(|(name, _, _)| *name)
        .collect()
}

impl State {
    fn respond(&mut self, req: &Req) -> Reply {
        let segs: Vec<&str> = req.path.split('/').filter(|s| !s.is_empty()).collect();
        let api = match segs.first() {
            Some(&"v1") => Api::V1,
            Some(&"v2-beta") if self.opts.v2beta => Api::V2Beta,
            _ => return error(404),
        };
        // The script a registration URL points at needs no key: the token is the secret.
        if api == Api::V1 && segs.len() == 3 && segs[1] == "scripts" {
            return self.script(req, segs[2]);
        }
        if !self.authorized(req.headers) {
            return error(401);
        }
        let root = format!("{}/{}", self.base, api.root());
        let pid = self.opts.project_id.clone();
        match &segs[1..] {
            [] => {
                if req.method != Method::GET {
                    return error(405);
                }
                self.api_root(api)
            }
            ["projects"] => {
                if req.method != Method::GET {
                    return error(405);
                }
                let url = format!("{root}/projects");
                let item = Item {
                    num: 5,
                    id: pid.clone(),
                    fields: vec![("id", Some(pid.clone())), ("state", Some("active".into()))],
                    json: self.project_json(api),
                };
                let kind = ("project", &["id", "state", "name", "kind"][..]);
                self.collection(req, &url, kind, vec![item], json!({}))
            }
            ["projects", p] => {
                if *p != pid {
                    return error(404);
                }
                if req.method != Method::GET {
                    return error(405);
                }
                Reply::json(200, self.project_json(api))
            }
            ["projects", p, coll, rest @ ..] => {
                if *p != pid {
                    return error(404);
                }
                let prefix = format!("{root}/projects/{pid}");
                self.resource(api, req, &prefix, coll, rest)
            }
            [coll, rest @ ..] => {
                // Environment keys are bound to their project: unscoped collections mean
                // that project; asking for another one finds nothing.
                let asked = req.param("projectId").map(str::to_string).or_else(|| {
                    req.headers
                        .get("x-api-project-id")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string)
                });
                if asked.is_some_and(|a| a != pid) {
                    return error(404);
                }
                self.resource(api, req, &root, coll, rest)
            }
        }
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let Some((scheme, encoded)) = value.trim().split_once(' ') else {
            return false;
        };
        if !scheme.eq_ignore_ascii_case("basic") {
            return false;
        }
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let Ok(text) = String::from_utf8(decoded) else {
            return false;
        };
        text.split_once(':').is_some_and(|(user, pass)| {
            user == self.opts.access_key && pass == self.opts.secret_key
        })
    }

    fn script(&self, req: &Req, token: &str) -> Reply {
        if req.method != Method::GET {
            return error(405);
        }
        if !self
            .tokens
            .iter()
            .any(|t| t.state == "active" && t.token == token)
        {
            return error(404);
        }
        let text = format!(
            "#!/bin/sh\n\
             # Rancher agent registration (test bed stand-in)\n\
             export CATTLE_REGISTRATION_ACCESS_KEY=\"registrationToken\"\n\
             export CATTLE_REGISTRATION_SECRET_KEY=\"{token}\"\n\
             export CATTLE_URL=\"{}/v1\"\n\
             export CATTLE_AGENT_IMAGE=\"{}\"\n",
            self.base, self.opts.agent_image
        );
        Reply {
            status: 200,
            body: Body::Text(text),
        }
    }

    fn api_root(&self, api: Api) -> Reply {
        let root = format!("{}/{}", self.base, api.root());
        Reply::json(
            200,
            json!({
                "type": "apiRoot",
                "id": api.root(),
                "links": {
                    "self": root,
                    "hosts": format!("{root}/hosts"),
                    "registrationtokens": format!("{root}/registrationtokens"),
                    "projects": format!("{root}/projects"),
                    "schemas": format!("{root}/schemas"),
                },
                "actions": {},
            }),
        )
    }

    fn project_json(&self, api: Api) -> Value {
        let pid = &self.opts.project_id;
        let url = format!("{}/{}/projects/{pid}", self.base, api.root());
        json!({
            "id": pid,
            "type": "project",
            "kind": "project",
            "baseType": "account",
            "name": "Default",
            "description": null,
            "state": "active",
            "orchestration": "cattle",
            "uuid": "adminProject",
            "removed": null,
            "transitioning": "no",
            "transitioningMessage": null,
            "links": {
                "self": url,
                "hosts": format!("{url}/hosts"),
                "registrationTokens": format!("{url}/registrationtokens"),
            },
            "actions": {},
        })
    }

    fn resource(&mut self, api: Api, req: &Req, prefix: &str, coll: &str, rest: &[&str]) -> Reply {
        let (kind, name) = match coll.to_ascii_lowercase().as_str() {
            "hosts" | "host" => (Kind::Hosts, "hosts"),
            "registrationtokens" | "registrationtoken" => (Kind::Tokens, "registrationtokens"),
            // Evacuation is v2-beta's (reference.md), and so are its events.
            "externalhostevents" | "externalhostevent" if api == Api::V2Beta => {
                (Kind::Events, "externalhostevents")
            }
            "instances" | "instance" | "containers" | "container" => (Kind::Instances, "instances"),
            _ => return error(404),
        };
        let coll_url = format!("{prefix}/{name}");
        match (kind, rest) {
            (Kind::Hosts, [id, "instances"]) => {
                if !self.hosts.iter().any(|h| h.id == *id) {
                    return error(404);
                }
                if *req.method != Method::GET {
                    return error(405);
                }
                let url = format!("{coll_url}/{id}/instances");
                let items = self.instance_items(prefix, |c| c.host_id == *id);
                self.collection(req, &url, ("instance", INSTANCE_FILTERS), items, json!({}))
            }
            (Kind::Instances, []) => {
                if *req.method != Method::GET {
                    return error(405);
                }
                let items = self.instance_items(prefix, |_| true);
                self.collection(
                    req,
                    &coll_url,
                    ("instance", INSTANCE_FILTERS),
                    items,
                    json!({}),
                )
            }
            (Kind::Instances, [id]) => {
                let Some(c) = self.containers.iter().find(|c| c.id == *id) else {
                    return error(404);
                };
                match *req.method {
                    Method::GET => Reply::json(200, self.container_json(prefix, c)),
                    _ => error(405),
                }
            }
            (Kind::Events, []) => match *req.method {
                Method::GET => {
                    let items = self
                        .events
                        .iter()
                        .map(|e| Item {
                            num: e.num,
                            id: e.id.clone(),
                            fields: vec![
                                ("id", Some(e.id.clone())),
                                ("state", Some(e.state.clone())),
                                ("eventType", Some(e.event_type.clone())),
                                ("hostId", Some(e.host_id.clone())),
                                ("uuid", Some(e.uuid.clone())),
                                ("kind", Some("externalHostEvent".into())),
                            ],
                            json: self.event_json(&coll_url, e),
                        })
                        .collect();
                    let create = json!({ "externalHostEvent": coll_url });
                    let kind = ("externalHostEvent", EVENT_FILTERS);
                    self.collection(req, &coll_url, kind, items, create)
                }
                Method::POST => self.create_event(req, &coll_url),
                _ => error(405),
            },
            (Kind::Events, [id]) => {
                let Some(event) = self.events.iter().find(|e| e.id == *id) else {
                    return error(404);
                };
                match *req.method {
                    Method::GET => Reply::json(200, self.event_json(&coll_url, event)),
                    Method::POST if req.param("action").is_some() => {
                        error_with(422, "InvalidAction", Value::Null, json!("action"))
                    }
                    _ => error(405),
                }
            }
            (Kind::Hosts, []) => match *req.method {
                Method::GET => {
                    let items = self
                        .hosts
                        .iter()
                        .filter(|h| !is_removed(&h.state))
                        .map(|h| Item {
                            num: h.num,
                            id: h.id.clone(),
                            fields: host_fields(h),
                            json: self.host_json(api, &coll_url, h),
                        })
                        .collect();
                    self.collection(req, &coll_url, ("host", HOST_FILTERS), items, json!({}))
                }
                _ => error(405),
            },
            (Kind::Hosts, [id]) => {
                if !self.hosts.iter().any(|h| h.id == *id) {
                    return error(404);
                }
                match *req.method {
                    Method::GET => {
                        let host = self.hosts.iter().find(|h| h.id == *id);
                        let body = host.map(|h| self.host_json(api, &coll_url, h));
                        Reply::json(200, body.unwrap_or(Value::Null))
                    }
                    Method::POST => match req.param("action") {
                        Some(action) => self.host_action(api, &coll_url, id, action, false),
                        None => error(405),
                    },
                    Method::DELETE => self.host_action(api, &coll_url, id, "remove", true),
                    _ => error(405),
                }
            }
            (Kind::Tokens, []) => match *req.method {
                Method::GET => {
                    let items = self
                        .tokens
                        .iter()
                        .map(|t| Item {
                            num: t.num,
                            id: t.id.clone(),
                            fields: vec![
                                ("id", Some(t.id.clone())),
                                ("state", Some(t.state.clone())),
                                ("name", None),
                                ("uuid", Some(t.uuid.clone())),
                                ("kind", Some("registrationToken".into())),
                            ],
                            json: self.token_json(&coll_url, t),
                        })
                        .collect();
                    let create = json!({ "registrationToken": coll_url });
                    let kind = ("registrationToken", TOKEN_FILTERS);
                    self.collection(req, &coll_url, kind, items, create)
                }
                Method::POST => {
                    // Any JSON object will do (`{}`, or a name); anything else is refused.
                    let body_ok = req.body.iter().all(u8::is_ascii_whitespace)
                        || serde_json::from_slice::<Value>(req.body).is_ok_and(|v| v.is_object());
                    if !body_ok {
                        return error_with(422, "InvalidBodyContent", Value::Null, Value::Null);
                    }
                    let id = self.new_token(false);
                    self.tokens_created += 1;
                    let token = self.tokens.iter().find(|t| t.id == id);
                    let body = token.map(|t| self.token_json(&coll_url, t));
                    Reply::json(201, body.unwrap_or(Value::Null))
                }
                _ => error(405),
            },
            (Kind::Tokens, [id]) => {
                let Some(token) = self.tokens.iter().find(|t| t.id == *id) else {
                    return error(404);
                };
                match *req.method {
                    Method::GET => Reply::json(200, self.token_json(&coll_url, token)),
                    Method::POST if req.param("action").is_some() => {
                        error_with(422, "InvalidAction", Value::Null, json!("action"))
                    }
                    _ => error(405),
                }
            }
            _ => error(404),
        }
    }

    fn host_action(
        &mut self,
        api: Api,
        coll_url: &str,
        id: &str,
        action: &str,
        delete: bool,
    ) -> Reply {
        if !action_exists(api, action) {
            return error_with(422, "InvalidAction", Value::Null, json!("action"));
        }
        let opts = self.opts.clone();
        let Some(state) = self
            .hosts
            .iter()
            .find(|h| h.id == id)
            .map(|h| h.state.clone())
        else {
            return error(404);
        };
        if !valid_actions(api, &state).contains(&action) {
            return error(422);
        }
        let (_, _, via) = HOST_ACTIONS
            .iter()
            .find(|(name, _, _)| *name == action)
            .copied()
            .unwrap_or(("", &[], None));
        if matches!(action, "remove" | "purge") {
            let containers = self.containers_left(id);
            if !containers.is_empty() {
                self.removed_with_containers.push(RemovedWithContainers {
                    host_id: id.to_string(),
                    action: action.to_string(),
                    containers,
                });
            }
        }
        let status = match via {
            Some(next) => {
                if let Some(host) = self.host_mut(id) {
                    host.enter(next, &opts);
                }
                if delete {
                    200
                } else {
                    202
                }
            }
            // evacuate: the host stays as it is; only the event is recorded, and its
            // process does the rest later.
            None => {
                self.new_event(id, false, true);
                200
            }
        };
        let host = self.hosts.iter().find(|h| h.id == id);
        let body = host.map(|h| self.host_json(api, coll_url, h));
        Reply::json(status, body.unwrap_or(Value::Null))
    }

    /// `POST` on `externalhostevents`: `{"eventType":"host.evacuate","hostId":"1h1"}`,
    /// optionally `"deleteHost": true`; 201 with the event `creating`.
    fn create_event(&mut self, req: &Req, coll_url: &str) -> Reply {
        let body = if req.body.iter().all(u8::is_ascii_whitespace) {
            json!({})
        } else {
            match serde_json::from_slice::<Value>(req.body) {
                Ok(v) if v.is_object() => v,
                _ => return error_with(422, "InvalidBodyContent", Value::Null, Value::Null),
            }
        };
        match body.get("eventType").and_then(Value::as_str) {
            None | Some("") => {
                return error_with(422, "MissingRequired", Value::Null, json!("eventType"))
            }
            Some(EVACUATE_EVENT) => {}
            Some(_) => return error_with(422, "InvalidOption", Value::Null, json!("eventType")),
        }
        let host_id = match body.get("hostId").and_then(Value::as_str) {
            None | Some("") => {
                return error_with(422, "MissingRequired", Value::Null, json!("hostId"))
            }
            Some(h) if self.hosts.iter().any(|x| x.id == h) => h.to_string(),
            Some(_) => return error_with(422, "InvalidReference", Value::Null, json!("hostId")),
        };
        let delete_host = body
            .get("deleteHost")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let id = self.new_event(&host_id, delete_host, false);
        let event = self.events.iter().find(|e| e.id == id);
        let body = event.map(|e| self.event_json(coll_url, e));
        Reply::json(201, body.unwrap_or(Value::Null))
    }

    fn event_json(&self, coll_url: &str, e: &HostEvent) -> Value {
        let url = format!("{coll_url}/{}", e.id);
        let account = format!("{}/v2-beta/projects/{}", self.base, self.opts.project_id);
        json!({
            "id": e.id,
            "type": "externalHostEvent",
            "kind": "externalHostEvent",
            "baseType": "externalEvent",
            "eventType": e.event_type,
            "hostId": e.host_id,
            "hostLabel": null,
            "deleteHost": e.delete_host,
            "state": e.state,
            "accountId": self.opts.project_id,
            "uuid": e.uuid,
            "created": rfc3339(e.created_ms),
            "createdTS": e.created_ms,
            "removed": null,
            "transitioning": if e.state == "creating" { "yes" } else { "no" },
            "transitioningMessage": null,
            "transitioningProgress": null,
            "links": { "self": url, "account": account },
            "actions": {},
        })
    }

    /// The containers `which` selects, as collection items; removed ones drop out of lists.
    fn instance_items(&self, prefix: &str, which: impl Fn(&Container) -> bool) -> Vec<Item> {
        self.containers
            .iter()
            .filter(|c| which(c) && !is_removed(&c.state))
            .map(|c| Item {
                num: c.num,
                id: c.id.clone(),
                fields: vec![
                    ("id", Some(c.id.clone())),
                    ("state", Some(c.state.clone())),
                    ("name", Some(c.name.clone())),
                    ("system", Some(c.system.to_string())),
                    ("uuid", Some(c.uuid.clone())),
                    ("kind", Some("container".into())),
                ],
                json: self.container_json(prefix, c),
            })
            .collect()
    }

    fn container_json(&self, prefix: &str, c: &Container) -> Value {
        let url = format!("{prefix}/instances/{}", c.id);
        json!({
            "id": c.id,
            "type": "container",
            "kind": "container",
            "baseType": "instance",
            "name": c.name,
            "state": c.state,
            "system": c.system,
            "hostId": c.host_id,
            "accountId": self.opts.project_id,
            "uuid": c.uuid,
            "created": rfc3339(c.created_ms),
            "createdTS": c.created_ms,
            "removed": c.removed_ms.map(rfc3339),
            "transitioning": if matches!(c.state.as_str(), "stopping" | "removing") { "yes" } else { "no" },
            "transitioningMessage": null,
            "links": {
                "self": url,
                "hosts": format!("{prefix}/hosts/{}", c.host_id),
            },
            "actions": {},
        })
    }

    fn host_json(&self, api: Api, coll_url: &str, h: &Host) -> Value {
        let url = format!("{coll_url}/{}", h.id);
        // v2-beta folds the agent's state into `state` for an active host.
        let state = match (&h.agent_state, api) {
            (Some(agent), Api::V2Beta) if h.state == "active" => agent.clone(),
            _ => h.state.clone(),
        };
        let actions: Map<String, Value> = valid_actions(api, &h.state)
            .into_iter()
            .map(|a| (a.to_string(), json!(format!("{url}/?action={a}"))))
            .collect();
        let account = format!(
            "{}/{}/projects/{}",
            self.base,
            api.root(),
            self.opts.project_id
        );
        json!({
            "id": h.id,
            "type": "host",
            "kind": "host",
            "baseType": "host",
            "name": null,
            "description": null,
            "hostname": h.hostname,
            "labels": h.labels,
            "state": state,
            "agentState": h.agent_state,
            "agentIpAddress": h.agent_ip,
            "uuid": h.uuid,
            "physicalHostId": format!("1ph{}", h.num),
            "accountId": self.opts.project_id,
            "created": rfc3339(h.created_ms),
            "createdTS": h.created_ms,
            "removed": h.removed_ms.map(rfc3339),
            "transitioning": if completion(&h.state, &self.opts).is_some() { "yes" } else { "no" },
            "transitioningMessage": null,
            "transitioningProgress": null,
            "links": {
                "self": url,
                "account": account,
                "instances": format!("{url}/instances"),
                "hostLabels": format!("{url}/hostlabels"),
            },
            "actions": actions,
        })
    }

    fn token_json(&self, coll_url: &str, t: &Token) -> Value {
        let url = format!("{coll_url}/{}", t.id);
        let active = t.state == "active";
        let registration_url = format!("{}/v1/scripts/{}", self.base, t.token);
        let image = &self.opts.agent_image;
        let command = format!(
            "sudo docker run --rm --privileged -v /var/run/docker.sock:/var/run/docker.sock \
             -v /var/lib/rancher:/var/lib/rancher {image} {registration_url}"
        );
        let account = format!("{}/v1/projects/{}", self.base, self.opts.project_id);
        json!({
            "id": t.id,
            "type": "registrationToken",
            "kind": "registrationToken",
            "baseType": "credential",
            "name": null,
            "description": null,
            "state": t.state,
            "accountId": self.opts.project_id,
            "uuid": t.uuid,
            "created": rfc3339(t.created_ms),
            "createdTS": t.created_ms,
            "removed": null,
            "transitioning": if active { "no" } else { "yes" },
            "transitioningMessage": null,
            "transitioningProgress": null,
            "token": active.then(|| t.token.clone()),
            "registrationUrl": active.then_some(registration_url),
            "command": active.then_some(command),
            "image": active.then(|| image.clone()),
            "links": { "self": url, "account": account },
            "actions": {},
        })
    }

    /// A filtered, paged collection of `items` (already in id order).
    fn collection(
        &self,
        req: &Req,
        coll_url: &str,
        (resource_type, filterable): (&str, &[&str]),
        items: Vec<Item>,
        create_types: Value,
    ) -> Reply {
        let mut conds: Vec<Cond> = Vec::new();
        for (key, value) in req.pairs {
            if RESERVED.contains(&key.as_str()) {
                continue;
            }
            let (field, modifier) = MODIFIERS
                .iter()
                .find_map(|(suffix, m)| key.strip_suffix(suffix).map(|f| (f, *m)))
                .unwrap_or((key.as_str(), "eq"));
            // Unknown filter names are silently ignored, as Cattle does.
            if filterable.contains(&field) {
                conds.push(Cond {
                    field: field.to_string(),
                    modifier,
                    value: value.clone(),
                });
            }
        }

        let limit = req
            .param("limit")
            .and_then(|l| l.parse::<i64>().ok())
            .filter(|l| *l > 0)
            .map(|l| l.min(1000) as usize)
            .unwrap_or(self.opts.page_size.max(1));
        let after = match req.param("marker") {
            None | Some("") => 0,
            Some(marker) => match marker.strip_prefix('m').and_then(id_number) {
                Some(n) => n,
                None => {
                    return error_with(422, "InvalidFormat", Value::Null, json!("marker"));
                }
            },
        };

        let matching: Vec<Item> = items
            .into_iter()
            .filter(|item| matches_all(item, &conds))
            .filter(|item| item.num > after)
            .collect();
        let more = matching.len() > limit;
        let page: Vec<Item> = matching.into_iter().take(limit).collect();
        let next = match page.last() {
            Some(last) if more => {
                let mut query = url::form_urlencoded::Serializer::new(String::new());
                for (k, v) in req.pairs {
                    if k != "limit" && k != "marker" {
                        query.append_pair(k, v);
                    }
                }
                query.append_pair("limit", &limit.to_string());
                query.append_pair("marker", &format!("m{}", last.id));
                json!(format!("{coll_url}?{}", query.finish()))
            }
            _ => Value::Null,
        };

        let mut filters = Map::new();
        for field in filterable {
            let applied: Vec<Value> = conds
                .iter()
                .filter(|c| c.field == *field)
                .map(|c| json!({ "modifier": c.modifier, "value": c.value }))
                .collect();
            let value = if applied.is_empty() {
                Value::Null
            } else {
                Value::Array(applied)
            };
            filters.insert(field.to_string(), value);
        }
        let self_url = if req.query.is_empty() {
            coll_url.to_string()
        } else {
            format!("{coll_url}?{}", req.query)
        };
        Reply::json(
            200,
            json!({
                "type": "collection",
                "resourceType": resource_type,
                "links": { "self": self_url },
                "createTypes": create_types,
                "actions": {},
                "data": page.into_iter().map(|i| i.json).collect::<Vec<_>>(),
                "sortLinks": {},
                "pagination": {
                    "first": null,
                    "previous": null,
                    "next": next,
                    "limit": limit,
                    "total": null,
                    "partial": more,
                },
                "sort": null,
                "filters": filters,
                "createDefaults": {},
            }),
        )
    }
}

fn host_fields(h: &Host) -> Vec<(&'static str, Option<String>)> {
    vec![
        ("id", Some(h.id.clone())),
        ("state", Some(h.state.clone())),
        ("agentState", h.agent_state.clone()),
        ("name", None),
        ("uuid", Some(h.uuid.clone())),
        ("kind", Some("host".to_string())),
    ]
}

/// `1h12` → 12.
fn id_number(id: &str) -> Option<u64> {
    let rest = id.strip_prefix('1')?;
    let digits = rest.trim_start_matches(|c: char| c.is_ascii_alphabetic());
    if digits.len() == rest.len() {
        return None;
    }
    digits.parse().ok()
}

/// Conditions on one field with `eq`, `prefix` or `like` are alternatives; all others must
/// all hold.
fn matches_all(item: &Item, conds: &[Cond]) -> bool {
    let value_of = |field: &str| {
        item.fields
            .iter()
            .find(|(f, _)| *f == field)
            .and_then(|(_, v)| v.clone())
    };
    let mut alternatives: HashMap<(&str, &str), bool> = HashMap::new();
    for cond in conds {
        let value = value_of(&cond.field);
        let hit = match cond.modifier {
            "eq" => value.as_deref() == Some(cond.value.as_str()),
            "ne" => value.as_deref() != Some(cond.value.as_str()),
            "prefix" => value.as_deref().is_some_and(|v| v.starts_with(&cond.value)),
            "like" => value.as_deref().is_some_and(|v| like(v, &cond.value)),
            "notlike" => !value.as_deref().is_some_and(|v| like(v, &cond.value)),
            "null" => value.is_none(),
            "notnull" => value.is_some(),
            _ => true,
        };
        match cond.modifier {
            "eq" | "prefix" | "like" => {
                *alternatives
                    .entry((cond.field.as_str(), cond.modifier))
                    .or_insert(false) |= hit;
            }
            _ if !hit => return false,
            _ => {}
        }
    }
    alternatives.values().all(|hit| *hit)
}

/// SQL `LIKE` with `%` (no `_`), which is what Cattle's `_like` passes through.
fn like(value: &str, pattern: &str) -> bool {
    let parts: Vec<&str> = pattern.split('%').collect();
    if parts.len() == 1 {
        return value == pattern;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !value.starts_with(first) || !value.ends_with(last) || value.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &value[first.len()..value.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

fn random_string(charset: &[u8], len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| charset[rng.random_range(0..charset.len())] as char)
        .collect()
}

fn random_uuid() -> String {
    let hex = random_string(b"0123456789abcdef", 32);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// `2024-05-01T12:00:00Z` from milliseconds since the epoch (Cattle's `created` format).
fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days → civil date.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------------------
// The watcher: what the server and the agent do when a bootstrap container runs

/// How often the watcher looks at the engine.
const POLL: Duration = Duration::from_millis(200);

/// Failed polls in a row before the engine counts as down, its agent with it: one slow
/// answer on a busy machine is not an outage.
const DOWN_AFTER: u32 = 3;

struct Watcher {
    socket: PathBuf,
    client: Option<Docker>,
    /// The engine's `docker info` ID and Name. The ID stands for the agent's identity,
    /// which the real agent keeps in `/var/lib/rancher/state` on that machine.
    engine: Option<(String, String)>,
    /// Containers already looked at.
    seen: HashSet<String>,
    failures: u32,
}

/// Polls the engine until the stand-in is dropped.
async fn watch(state: Weak<Mutex<State>>, socket: PathBuf) {
    let mut watcher = Watcher {
        socket,
        client: None,
        engine: None,
        seen: HashSet::new(),
        failures: 0,
    };
    loop {
        let Some(strong) = state.upgrade() else {
            return;
        };
        drop(strong);
        let polled = tokio::time::timeout(Duration::from_secs(10), watcher.poll(&state));
        match polled.await {
            Ok(Ok(())) => watcher.failures = 0,
            _ => {
                // Not up yet, restarting or gone: connect afresh next time.
                watcher.client = None;
                watcher.failures += 1;
                if watcher.failures >= DOWN_AFTER {
                    watcher.agent_liveness(&state, false);
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

impl Watcher {
    async fn poll(&mut self, state: &Weak<Mutex<State>>) -> Result<(), bollard::errors::Error> {
        let docker = match &self.client {
            Some(docker) => docker.clone(),
            None => {
                let docker = crate::docker::connect(&self.socket).await?;
                let info = docker.info().await?;
                self.engine = Some((info.id.unwrap_or_default(), info.name.unwrap_or_default()));
                self.client = Some(docker.clone());
                docker
            }
        };
        let options = ListContainersOptions {
            all: true,
            ..Default::default()
        };
        let list = docker.list_containers(Some(options)).await?;
        let agent_running = list.iter().any(|c| {
            c.names
                .as_ref()
                .is_some_and(|names| names.iter().any(|n| n == "/rancher-agent"))
                && c.state == Some(ContainerSummaryStateEnum::RUNNING)
        });

        let mut registered = false;
        for summary in &list {
            let Some(id) = summary.id.clone() else {
                continue;
            };
            if self.seen.contains(&id) {
                continue;
            }
            // The listed command is the entrypoint and its arguments: a cheap first look.
            if !summary.command.as_deref().unwrap_or("").contains(SCRIPTS) {
                self.seen.insert(id);
                continue;
            }
            let inspected = match docker.inspect_container(&id, None).await {
                Ok(inspected) => inspected,
                // Gone already (auto-removed), or listed while the engine is still creating
                // it, before it can be inspected: look again next time. Marking it seen
                // here lost a bootstrap now and then; one really gone is not listed again.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => continue,
                // Any other failure (a busy engine, a dropped connection) is not a verdict
                // on the container: fail this poll and look again next time.
                Err(e) => return Err(e),
            };
            let args = inspected.args.clone().unwrap_or_default();
            // This server's, whichever address it was reached at (links follow the Host
            // the client asked for: a proxy's, a load balancer's).
            if !args.first().is_some_and(|a| is_ours(state, a)) {
                self.seen.insert(id);
                continue;
            }
            // Created but never started: nothing has run yet; look again next time.
            let started = inspected
                .state
                .as_ref()
                .and_then(|s| s.started_at.as_deref())
                .is_some_and(|t| !t.is_empty() && !t.starts_with("0001-"));
            if !started {
                continue;
            }
            self.seen.insert(id);
            // Stopped before it got to register (drover cut a registration short): a real
            // bootstrap takes seconds to register, so one stopped this soon never did.
            if !inspected
                .state
                .as_ref()
                .and_then(|s| s.running)
                .unwrap_or(false)
            {
                continue;
            }
            self.bootstrap(&docker, state, inspected).await;
            registered = true;
        }
        // The list predates the agent a bootstrap just started: judge it next time.
        if !registered {
            self.agent_liveness(state, agent_running);
        }
        Ok(())
    }

    /// An active host of this engine is `disconnected` while its `rancher-agent` container
    /// does not run, and connected again once it does.
    fn agent_liveness(&self, state: &Weak<Mutex<State>>, running: bool) {
        let Some((engine_id, _)) = &self.engine else {
            return;
        };
        let Some(strong) = state.upgrade() else {
            return;
        };
        let mut state = lock(&strong);
        state.advance();
        for host in state.hosts.iter_mut() {
            if host.engine.as_deref() != Some(engine_id) || host.state != "active" {
                continue;
            }
            // Only a change of what we see counts, so a test's set_host_state holds.
            if host.agent_seen_running != Some(running) {
                host.agent_seen_running = Some(running);
                host.agent_state = (!running).then(|| "disconnected".to_string());
            }
        }
    }

    /// Registers (or gives back) the host a bootstrap container stands for and starts its
    /// long-running agent, as the real server and bootstrap do.
    async fn bootstrap(
        &self,
        docker: &Docker,
        state: &Weak<Mutex<State>>,
        container: ContainerInspectResponse,
    ) {
        let config = container.config.unwrap_or_default();
        let host_config = container.host_config.unwrap_or_default();
        let args = container.args.unwrap_or_default();
        let env = config.env.unwrap_or_default();
        let image = config.image.unwrap_or_default();
        let binds = host_config.binds.unwrap_or_default();
        let mut seen = BootstrapSeen {
            container_id: container.id.unwrap_or_default(),
            image: image.clone(),
            args: args.clone(),
            env: env.clone(),
            binds: binds.clone(),
            privileged: host_config.privileged.unwrap_or(false),
            auto_remove: host_config.auto_remove.unwrap_or(false),
            host_id: None,
            rejected: None,
        };
        let token = args
            .first()
            .and_then(|a| script_token(a))
            .unwrap_or("")
            .to_string();
        // Docker keeps the last of repeated variables.
        let var = |name: &str| {
            env.iter()
                .rev()
                .find_map(|e| e.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
        };
        let (engine_id, engine_name) = self.engine.clone().unwrap_or_default();

        let Some(strong) = state.upgrade() else {
            return;
        };
        let outcome = {
            let mut state = lock(&strong);
            state.advance();
            register(
                &mut state,
                &token,
                var("CATTLE_AGENT_IP"),
                var("CATTLE_HOST_LABELS"),
                &engine_id,
                &engine_name,
            )
        };
        drop(strong);
        match outcome {
            Ok(id) => {
                seen.host_id = Some(id);
                if let Err(e) = start_agent(docker, &image, &env, &binds).await {
                    eprintln!(
                        "rancher stand-in: starting rancher-agent on {}: {e}",
                        self.socket.display()
                    );
                }
                // A real bootstrap starts the agent while it runs. Stopped meanwhile (by a
                // take-out that then found no agent to stop), it never got that far.
                if !still_running(docker, &seen.container_id).await {
                    let remove = RemoveContainerOptions {
                        force: true,
                        ..Default::default()
                    };
                    let _ = docker.remove_container("rancher-agent", Some(remove)).await;
                }
            }
            Err(why) => seen.rejected = Some(why),
        }
        // Recorded last, so that a test seeing it also sees the agent container.
        if let Some(strong) = state.upgrade() {
            lock(&strong).bootstraps.push(seen);
        }
    }
}

/// Where a registration URL's token follows the server's address.
const SCRIPTS: &str = "/v1/scripts/";

/// The token of a registration URL `<server>/v1/scripts/<token>`.
fn script_token(url: &str) -> Option<&str> {
    let (_, token) = url.split_once(SCRIPTS)?;
    Some(token.trim_end_matches('/'))
}

/// Whether a registration URL is for this server: at its own address (then a token it
/// does not know is refused), or at another (a proxy's) with one of its tokens.
fn is_ours(state: &Weak<Mutex<State>>, url: &str) -> bool {
    let Some(strong) = state.upgrade() else {
        return false;
    };
    let state = lock(&strong);
    url.starts_with(&format!("{}{SCRIPTS}", state.base))
        || script_token(url).is_some_and(|token| state.tokens.iter().any(|t| t.token == token))
}

/// Whether the container is still running (not stopped, not auto-removed); an engine that
/// does not answer says nothing against it.
async fn still_running(docker: &Docker, id: &str) -> bool {
    match docker.inspect_container(id, None).await {
        Ok(c) => c.state.and_then(|s| s.running).unwrap_or(false),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => false,
        Err(_) => true,
    }
}

/// The server's side of a registration: checks what the agent would send, then gives back
/// this engine's host or creates one in `registering`.
fn register(
    state: &mut State,
    token: &str,
    agent_ip: Option<String>,
    labels: Option<String>,
    engine_id: &str,
    engine_name: &str,
) -> Result<String, String> {
    if !state
        .tokens
        .iter()
        .any(|t| t.state == "active" && t.token == token)
    {
        return Err(format!("registration token {token:?} is not valid"));
    }
    let Some(ip) = agent_ip else {
        return Err("CATTLE_AGENT_IP is not set".to_string());
    };
    match ip.parse::<Ipv4Addr>() {
        Ok(addr) if !addr.is_loopback() && !addr.is_unspecified() => {}
        _ => {
            return Err(format!(
                "CATTLE_AGENT_IP {ip:?} is not a usable IPv4 address"
            ))
        }
    }
    let labels = parse_labels(labels.as_deref().unwrap_or(""));
    if let Some(host) = state
        .hosts
        .iter_mut()
        .find(|h| h.engine.as_deref() == Some(engine_id) && !is_gone(&h.state))
    {
        host.labels = labels;
        host.agent_ip = ip;
        host.agent_seen_running = None;
        return Ok(host.id.clone());
    }
    let spec = HostSpec {
        hostname: engine_name.to_string(),
        labels,
        state: "registering".to_string(),
        agent_state: None,
        agent_ip: ip,
    };
    Ok(state.new_host(spec, Some(engine_id.to_string())))
}

/// `CATTLE_HOST_LABELS` is a URL query string; for a repeated key the first wins.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    for (key, value) in url::form_urlencoded::parse(text.as_bytes()) {
        if !key.is_empty() {
            labels
                .entry(key.into_owned())
                .or_insert_with(|| value.into_owned());
        }
    }
    labels
}

/// What the bootstrap does last: replace `rancher-agent` with a fresh long-running one
/// (not privileged: these machines cannot start privileged containers).
async fn start_agent(
    docker: &Docker,
    image: &str,
    env: &[String],
    binds: &[String],
) -> Result<(), bollard::errors::Error> {
    let remove = RemoveContainerOptions {
        force: true,
        ..Default::default()
    };
    let _ = docker.remove_container("rancher-agent", Some(remove)).await;
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["run".to_string()]),
        env: Some(env.to_vec()),
        labels: Some(HashMap::from([(
            "io.rancher.container.system".to_string(),
            "rancher-agent".to_string(),
        )])),
        host_config: Some(HostConfig {
            binds: Some(binds.to_vec()),
            network_mode: Some("host".to_string()),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::ALWAYS),
                maximum_retry_count: None,
            }),
            privileged: Some(false),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = CreateContainerOptions {
        name: Some("rancher-agent".to_string()),
        ..Default::default()
    };
    docker.create_container(Some(options), body).await?;
    docker.start_container("rancher-agent", None).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::{DockerEngine, AGENT_IMAGE};
    use crate::http::{Fault, Match};
    use bollard::query_parameters::StopContainerOptions;

    fn fast() -> RancherOptions {
        RancherOptions {
            token_create_delay: Duration::from_millis(300),
            register_delay: Duration::from_millis(300),
            transition_delay: Duration::from_millis(200),
            ..Default::default()
        }
    }

    /// Sends a request with the stand-in's keys (or `auth`); `url` is absolute or a path.
    async fn call_as(
        r: &RancherServer,
        auth: Option<(&str, &str)>,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let url = if url.starts_with('/') {
            format!("{}{url}", r.url())
        } else {
            url.to_string()
        };
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let post = method == reqwest::Method::POST;
        let mut request = reqwest::Client::new().request(method, url);
        if let Some((user, pass)) = auth {
            request = request.basic_auth(user, Some(pass));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if post {
            request = request.json(&json!({}));
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn call(r: &RancherServer, method: &str, url: &str) -> (u16, Value) {
        call_as(r, Some((r.access_key(), &r.secret_key())), method, url, &[]).await
    }

    async fn get(r: &RancherServer, url: &str) -> Value {
        let (status, body) = call(r, "GET", url).await;
        assert_eq!(status, 200, "GET {url}: {body}");
        body
    }

    async fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn ids(collection: &Value) -> Vec<String> {
        collection["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|h| h["id"].as_str().unwrap().to_string())
            .collect()
    }

    fn host_spec(name: &str, state: &str, agent_state: Option<&str>) -> HostSpec {
        HostSpec {
            hostname: name.to_string(),
            labels: BTreeMap::from([("aws.instance_id".to_string(), format!("i-{name}"))]),
            state: state.to_string(),
            agent_state: agent_state.map(str::to_string),
            agent_ip: "10.0.0.9".to_string(),
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn keys_are_checked_and_roots_answer() {
        let r = RancherServer::start(fast()).await;
        let unauthorized = json!({"type":"error","status":401,"code":"Unauthorized",
            "message":"Unauthorized","fieldName":null});
        let path = "/v2-beta/projects/1a5/hosts";
        assert_eq!(
            call_as(&r, None, "GET", path, &[]).await,
            (401, unauthorized.clone())
        );
        let wrong = Some((r.access_key(), "nope"));
        assert_eq!(
            call_as(&r, wrong, "GET", path, &[]).await,
            (401, unauthorized.clone())
        );
        // A rotated secret: the old one is refused from then on.
        let old = r.secret_key();
        r.set_secret_key("rotated-secret");
        let before = Some((r.access_key(), old.as_str()));
        assert_eq!(call_as(&r, before, "GET", path, &[]).await.0, 401);
        let after = Some((r.access_key(), "rotated-secret"));
        assert_eq!(call_as(&r, after, "GET", path, &[]).await.0, 200);
        r.set_secret_key(&old);
        let hosts = get(&r, path).await;
        assert_eq!(hosts["type"], "collection");
        assert_eq!(hosts["resourceType"], "host");
        assert_eq!(hosts["data"], json!([]));
        assert_eq!(
            hosts["pagination"],
            json!({"first":null,"previous":null,"next":null,"limit":100,"total":null,"partial":false})
        );

        let root = get(&r, "/v2-beta").await;
        assert_eq!(root["type"], "apiRoot");
        assert_eq!(root["id"], "v2-beta");
        assert_eq!(root["links"]["self"], format!("{}/v2-beta", r.url()));
        assert_eq!(get(&r, "/v1/").await["id"], "v1");
        let project = get(&r, "/v2-beta/projects/1a5").await;
        assert_eq!(
            (&project["id"], &project["type"], &project["state"]),
            (&json!("1a5"), &json!("project"), &json!("active"))
        );
        let not_found = json!({"type":"error","status":404,"code":"NotFound",
            "message":"Not Found","fieldName":null});
        assert_eq!(
            call(&r, "GET", "/v2-beta/projects/1a9").await,
            (404, not_found.clone())
        );
        assert_eq!(
            call(&r, "GET", "/v2-beta/projects/1a9/hosts").await,
            (404, not_found.clone())
        );
        assert_eq!(
            call(&r, "GET", "/v2-beta/hosts/1h99").await,
            (404, not_found.clone())
        );
        assert_eq!(call(&r, "GET", "/v1/frobs").await, (404, not_found.clone()));
        assert_eq!(
            call_as(&r, None, "GET", "/v1/scripts/NOPE", &[]).await,
            (404, not_found)
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn registration_tokens_are_created_asynchronously() {
        let r = RancherServer::start(fast()).await;
        let coll = "/v2-beta/projects/1a5/registrationtokens";
        assert_eq!(get(&r, coll).await["data"], json!([]));

        let (status, created) = call(&r, "POST", coll).await;
        assert_eq!(status, 201, "{created}");
        assert_eq!(created["type"], "registrationToken");
        assert_eq!(created["state"], "registering");
        assert_eq!(created["token"], Value::Null);
        assert_eq!(created["registrationUrl"], Value::Null);
        assert_eq!(created["command"], Value::Null);
        assert_eq!(r.tokens_created(), 1);
        let link = created["links"]["self"].as_str().unwrap().to_string();
        assert_eq!(
            link,
            format!("{}{coll}/{}", r.url(), created["id"].as_str().unwrap())
        );
        assert_eq!(get(&r, &link).await["state"], "registering");
        assert_eq!(
            get(&r, &format!("{coll}?state=active")).await["data"],
            json!([])
        );

        tokio::time::sleep(Duration::from_millis(400)).await;
        let token = get(&r, &link).await;
        assert_eq!(token["state"], "active");
        let secret = token["token"].as_str().unwrap();
        assert_eq!(secret.len(), 30);
        assert!(secret
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()));
        let url = format!("{}/v1/scripts/{secret}", r.url());
        assert_eq!(token["registrationUrl"], url);
        assert_eq!(token["image"], AGENT_IMAGE);
        let command = token["command"].as_str().unwrap();
        assert!(command.starts_with("sudo docker run --rm --privileged"));
        assert!(command.ends_with(&format!("{AGENT_IMAGE} {url}")));

        let active = get(&r, &format!("{coll}?state=active")).await;
        assert_eq!(ids(&active), vec![token["id"].as_str().unwrap()]);
        let v1 = get(&r, "/v1/registrationtokens?projectId=1a5&state=active").await;
        assert_eq!(v1["data"][0]["registrationUrl"], url);

        let script = reqwest::get(&url).await.unwrap();
        assert_eq!(script.status().as_u16(), 200);
        assert!(script.text().await.unwrap().starts_with("#!/bin/sh"));
        assert_eq!(call(&r, "GET", &format!("{url}X")).await.0, 404);

        // A pre-existing token that is still registering.
        let id = r.add_registration_token(false);
        assert_eq!(r.registration_url(&id), None);
        let listed = get(&r, coll).await;
        assert_eq!(listed["data"][1]["state"], "registering");
        assert_eq!(r.tokens_created(), 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(r.registration_url(&id).is_some());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn collections_page_and_filter() {
        let r = RancherServer::start(RancherOptions {
            page_size: 2,
            ..fast()
        })
        .await;
        let mut all = Vec::new();
        for n in 0..5 {
            let state = if n == 2 { "inactive" } else { "active" };
            all.push(r.add_host(host_spec(&format!("h{n}"), state, None)));
        }

        let first = get(&r, "/v2-beta/projects/1a5/hosts").await;
        assert_eq!(ids(&first), all[..2]);
        assert_eq!(first["pagination"]["partial"], true);
        assert_eq!(first["pagination"]["limit"], 2);
        let mut seen = ids(&first);
        let mut next = first["pagination"]["next"].clone();
        while let Some(url) = next.as_str() {
            assert!(url.starts_with(&r.url()), "{url}");
            let page = get(&r, url).await;
            seen.extend(ids(&page));
            next = page["pagination"]["next"].clone();
        }
        assert_eq!(seen, all);

        // Filters survive into `next`; unknown filter names are ignored.
        let mut active = Vec::new();
        let mut url = "/v1/hosts?projectId=1a5&state=active&hostname=h0".to_string();
        loop {
            let page = get(&r, &url).await;
            assert_eq!(
                page["filters"]["state"],
                json!([{"modifier":"eq","value":"active"}])
            );
            active.extend(ids(&page));
            match page["pagination"]["next"].as_str() {
                Some(next) => {
                    assert!(next.contains("projectId=1a5") && next.contains("state=active"));
                    url = next.to_string();
                }
                None => break,
            }
        }
        let expected: Vec<String> = all
            .iter()
            .enumerate()
            .filter(|(n, _)| *n != 2)
            .map(|(_, id)| id.clone())
            .collect();
        assert_eq!(active, expected);
        let inactive = get(&r, "/v2-beta/hosts?state_ne=active").await;
        assert_eq!(ids(&inactive), vec![all[2].clone()]);
        let either = get(&r, "/v2-beta/hosts?state=inactive&state=active&limit=10").await;
        assert_eq!(ids(&either), all);
        assert_eq!(either["pagination"]["next"], Value::Null);
        let by_id = get(&r, &format!("/v2-beta/hosts?id={}", all[3])).await;
        assert_eq!(ids(&by_id), vec![all[3].clone()]);
        let three = get(&r, "/v2-beta/hosts?limit=3").await;
        assert_eq!(ids(&three).len(), 3);
        let (status, body) = call(&r, "GET", "/v2-beta/hosts?marker=zzz").await;
        assert_eq!((status, &body["code"]), (422, &json!("InvalidFormat")));
    }

    #[tokio::test]
    async fn a_lost_agent_turns_reconnecting_then_disconnected_as_each_version_says() {
        let r = RancherServer::start(fast()).await;
        let id = r.add_host(host_spec("dying", "active", None));
        let states = |v2: &Value, v1: &Value| {
            (
                v2["state"].as_str().map(str::to_string),
                v2["agentState"].as_str().map(str::to_string),
                v1["state"].as_str().map(str::to_string),
                v1["agentState"].as_str().map(str::to_string),
            )
        };
        let look = || async {
            let v2 = get(&r, &format!("/v2-beta/projects/1a5/hosts/{id}")).await;
            let v1 = get(&r, &format!("/v1/hosts/{id}")).await;
            states(&v2, &v1)
        };
        let some = |s: &str| Some(s.to_string());
        r.lose_agent(&id, Duration::from_millis(300), Duration::from_millis(300));
        assert_eq!(look().await, (some("active"), None, some("active"), None));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            look().await,
            (
                some("reconnecting"),
                some("reconnecting"),
                some("active"),
                some("reconnecting")
            )
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            look().await,
            (
                some("disconnected"),
                some("disconnected"),
                some("active"),
                some("disconnected")
            )
        );
        // Listed so too, and filtered on.
        let list = get(&r, "/v2-beta/projects/1a5/hosts?agentState=disconnected").await;
        assert_eq!(list["data"][0]["id"], json!(id));
        // A deactivated host keeps its own state in v2-beta; the agent is still gone.
        r.set_host_state(&id, "inactive", Some("disconnected"));
        let v2 = get(&r, &format!("/v2-beta/projects/1a5/hosts/{id}")).await;
        assert_eq!(
            (&v2["state"], &v2["agentState"]),
            (&json!("inactive"), &json!("disconnected"))
        );
        r.set_host_state(&id, "active", None);
        r.lose_agent(&id, Duration::ZERO, Duration::from_secs(3600));
        assert_eq!(look().await.1, some("reconnecting"));
        r.agent_back(&id);
        assert_eq!(look().await, (some("active"), None, some("active"), None));
        // A manual host: no labels at all.
        let manual = r.add_host(HostSpec {
            hostname: "hand-made".into(),
            ..HostSpec::default()
        });
        let v2 = get(&r, &format!("/v2-beta/projects/1a5/hosts/{manual}")).await;
        assert_eq!(v2["labels"], json!({}));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn v2_beta_folds_the_agent_state_into_state() {
        let r = RancherServer::start(fast()).await;
        let gone = r.add_host(host_spec("gone", "active", Some("disconnected")));
        let fine = r.add_host(host_spec("fine", "active", None));
        let off = r.add_host(host_spec("off", "inactive", Some("disconnected")));

        let v2 = get(&r, &format!("/v2-beta/projects/1a5/hosts/{gone}")).await;
        assert_eq!(
            (&v2["state"], &v2["agentState"]),
            (&json!("disconnected"), &json!("disconnected"))
        );
        assert_eq!(v2["hostname"], "gone");
        assert_eq!(v2["labels"], json!({"aws.instance_id": "i-gone"}));
        assert_eq!(v2["agentIpAddress"], "10.0.0.9");
        assert_eq!(
            v2["links"]["self"],
            format!("{}/v2-beta/projects/1a5/hosts/{gone}", r.url())
        );
        let v1 = get(&r, &format!("/v1/hosts/{gone}")).await;
        assert_eq!(
            (&v1["state"], &v1["agentState"]),
            (&json!("active"), &json!("disconnected"))
        );
        assert_eq!(v1["links"]["self"], format!("{}/v1/hosts/{gone}", r.url()));
        assert_eq!(
            get(&r, &format!("/v2-beta/hosts/{fine}")).await["state"],
            "active"
        );
        assert_eq!(
            get(&r, &format!("/v2-beta/hosts/{off}")).await["state"],
            "inactive"
        );
        // Filters look at the raw state.
        let active = get(&r, "/v2-beta/hosts?state=active").await;
        assert_eq!(ids(&active), vec![gone.clone(), fine]);
        assert_eq!(r.host(&gone).unwrap().state, "active");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn hosts_follow_the_action_table() {
        let r = RancherServer::start(fast()).await;
        let id = r.add_host(host_spec("a", "active", None));
        let v2 = format!("/v2-beta/projects/1a5/hosts/{id}");
        let v1 = format!("/v1/hosts/{id}");
        let host = get(&r, &v2).await;
        let self_url = host["links"]["self"].as_str().unwrap().to_string();
        assert_eq!(
            host["actions"],
            json!({
                "deactivate": format!("{self_url}/?action=deactivate"),
                "evacuate": format!("{self_url}/?action=evacuate"),
            })
        );
        let actions = get(&r, &v1).await["actions"].clone();
        assert_eq!(
            actions.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["deactivate"]
        );

        let not_available = json!({"type":"error","status":422,"code":"ActionNotAvailable",
            "message":null,"fieldName":"action"});
        assert_eq!(
            call(&r, "POST", &format!("{v2}?action=remove")).await,
            (422, not_available.clone())
        );
        assert_eq!(call(&r, "DELETE", &v2).await, (422, not_available.clone()));
        let (status, body) = call(&r, "POST", &format!("{v2}?action=frobnicate")).await;
        assert_eq!((status, &body["code"]), (422, &json!("InvalidAction")));
        let (status, body) = call(&r, "POST", &format!("{v1}?action=evacuate")).await;
        assert_eq!((status, &body["code"]), (422, &json!("InvalidAction")));
        // (v2-beta's evacuate, which deactivates the host on its own, has its own tests.)

        let (status, body) = call(&r, "POST", &format!("{self_url}/?action=deactivate")).await;
        assert_eq!((status, &body["state"]), (202, &json!("deactivating")));
        assert_eq!(body["actions"], json!({}));
        assert_eq!(get(&r, &v2).await["state"], "deactivating");
        assert_eq!(
            call(&r, "POST", &format!("{v2}?action=deactivate")).await,
            (422, not_available.clone())
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let host = get(&r, &v2).await;
        assert_eq!(host["state"], "inactive");
        let mut names: Vec<&String> = host["actions"].as_object().unwrap().keys().collect();
        names.sort();
        assert_eq!(names, ["activate", "evacuate", "remove"]);

        let (status, body) = call(&r, "DELETE", &v2).await;
        assert_eq!((status, &body["state"]), (200, &json!("removing")));
        assert_eq!(ids(&get(&r, "/v2-beta/hosts").await), vec![id.clone()]);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Removed: out of lists, still readable, purge offered.
        assert_eq!(get(&r, "/v2-beta/hosts").await["data"], json!([]));
        assert_eq!(get(&r, "/v1/hosts?state=removed").await["data"], json!([]));
        let host = get(&r, &v1).await;
        assert_eq!(host["state"], "removed");
        assert_ne!(host["removed"], Value::Null);
        assert_eq!(
            host["actions"]
                .as_object()
                .unwrap()
                .keys()
                .collect::<Vec<_>>(),
            ["purge"]
        );
        let (status, body) = call(&r, "POST", &format!("{v1}/?action=purge")).await;
        assert_eq!((status, &body["state"]), (202, &json!("purging")));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(get(&r, &v2).await["state"], "purged");
        assert_eq!(
            r.host(&id).unwrap().history,
            [
                "active",
                "deactivating",
                "inactive",
                "removing",
                "removed",
                "purging",
                "purged"
            ]
        );
        assert_eq!(r.hosts().len(), 1);
    }

    async fn post_json(r: &RancherServer, path: &str, body: Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{}{path}", r.url()))
            .basic_auth(r.access_key(), Some(r.secret_key()))
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.expect("json"))
    }

    fn container(name: &str, system: bool) -> ContainerSpec {
        ContainerSpec {
            name: name.to_string(),
            system,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_evacuation_event_finishes_only_once_the_containers_are_gone() {
        let r = RancherServer::start(RancherOptions {
            container_delay: Duration::from_millis(300),
            ..fast()
        })
        .await;
        let id = r.add_host(host_spec("a", "active", None));
        r.add_container(&id, container("web-1", false));
        r.add_container(&id, container("network-agent", true));
        r.add_container(&id, container("web-2", false));
        let host = get(&r, &format!("/v2-beta/projects/1a5/hosts/{id}")).await;
        let instances = host["links"]["instances"].as_str().unwrap().to_string();
        let listed = get(&r, &instances).await;
        let flags: Vec<(&str, bool)> = listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| (c["name"].as_str().unwrap(), c["system"].as_bool().unwrap()))
            .collect();
        assert_eq!(
            flags,
            [("web-1", false), ("network-agent", true), ("web-2", false)]
        );
        assert_eq!(
            ids(&get(&r, &format!("/v1/hosts/{id}/instances")).await),
            ids(&listed)
        );

        // Validation, and evacuation is v2-beta's only.
        let events = "/v2-beta/projects/1a5/externalhostevents";
        let (status, body) = post_json(&r, events, json!({"hostId": id})).await;
        assert_eq!(
            (status, &body["code"], &body["fieldName"]),
            (422, &json!("MissingRequired"), &json!("eventType"))
        );
        let bad_host = json!({"eventType": "host.evacuate", "hostId": "1h999"});
        let (status, body) = post_json(&r, events, bad_host).await;
        assert_eq!((status, &body["code"]), (422, &json!("InvalidReference")));
        let evacuate = json!({"eventType": "host.evacuate", "hostId": id});
        let (status, _) = post_json(&r, "/v1/externalhostevents", evacuate.clone()).await;
        assert_eq!(status, 404);

        let (status, event) = post_json(&r, events, evacuate).await;
        assert_eq!((status, &event["state"]), (201, &json!("creating")));
        let event_url = event["links"]["self"].as_str().unwrap().to_string();
        // The host is deactivated first, and is inactive while its containers still go.
        let mut seen_inactive_with_containers = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        while get(&r, &event_url).await["state"] != "created" {
            assert!(Instant::now() < deadline, "the event never finished");
            let state = r.host(&id).unwrap().state;
            let left = r.state().containers_left(&id);
            assert!(
                left.len() == 2 || state == "inactive",
                "containers went before the host was inactive: {state}, {left:?}"
            );
            seen_inactive_with_containers |= state == "inactive" && !left.is_empty();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(seen_inactive_with_containers);
        assert_eq!(
            r.host(&id).unwrap().history,
            ["active", "deactivating", "inactive"]
        );
        for c in r.containers(&id) {
            let want: &[&str] = if c.system {
                &["running"]
            } else {
                &["running", "stopping", "stopped", "removing", "removed"]
            };
            assert_eq!(c.history, want, "{}", c.name);
        }
        let names: Vec<Value> = get(&r, &instances).await["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].clone())
            .collect();
        assert_eq!(names, [json!("network-agent")]);
        let filtered = get(
            &r,
            &format!("{events}?hostId={id}&eventType=host.evacuate&state=created"),
        )
        .await;
        assert_eq!(ids(&filtered), [event["id"].as_str().unwrap().to_string()]);

        // Removed with only system containers left: nothing recorded.
        let (status, _) = call(&r, "DELETE", &format!("/v2-beta/hosts/{id}")).await;
        assert_eq!(status, 200);
        assert!(r.removed_with_containers().is_empty());
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_evacuate_action_only_records_an_event_and_early_removals_are_recorded() {
        let r = RancherServer::start(RancherOptions {
            container_delay: Duration::from_millis(100),
            ..fast()
        })
        .await;
        let id = r.add_host(host_spec("a", "active", None));
        r.add_container(&id, container("db", false));
        let (status, body) =
            call(&r, "POST", &format!("/v2-beta/hosts/{id}?action=evacuate")).await;
        assert_eq!((status, &body["state"]), (200, &json!("active")));
        let events = r.host_events();
        assert_eq!(events.len(), 1);
        assert!(events[0].by_action && events[0].event_type == "host.evacuate");
        wait_until("the host inactive", Duration::from_secs(5), || {
            r.host(&id).unwrap().state == "inactive"
        })
        .await;
        // Removed at once, without waiting for the evacuation: the record shows it.
        let host = r.add_host(host_spec("b", "inactive", None));
        r.add_container(&host, container("cache", false));
        r.add_container(&host, container("healthcheck", true));
        let (status, _) = call(&r, "DELETE", &format!("/v2-beta/hosts/{host}")).await;
        assert_eq!(status, 200);
        assert_eq!(
            r.removed_with_containers(),
            [RemovedWithContainers {
                host_id: host.clone(),
                action: "remove".into(),
                containers: vec!["cache".into()],
            }]
        );
        wait_until("the event created", Duration::from_secs(5), || {
            r.host_events()[0].state == "created"
        })
        .await;
        assert_eq!(r.containers(&id)[0].state, "removed");

        // deleteHost: the event's process removes and purges the host too.
        let gone = r.add_host(host_spec("c", "active", None));
        let (status, _) = post_json(
            &r,
            "/v2-beta/externalhostevents",
            json!({"eventType": "host.evacuate", "hostId": gone, "deleteHost": true}),
        )
        .await;
        assert_eq!(status, 201);
        wait_until("the host purged", Duration::from_secs(5), || {
            r.host(&gone).unwrap().state == "purged"
        })
        .await;
        assert_eq!(
            r.host(&gone).unwrap().history,
            [
                "active",
                "deactivating",
                "inactive",
                "removing",
                "removed",
                "purging",
                "purged"
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn hosts_can_be_stuck_and_registering_ones_settle() {
        let r = RancherServer::start(fast()).await;
        let stuck = r.add_host(host_spec("s", "inactive", None));
        let fresh = r.add_host(host_spec("f", "registering", None));
        r.stick(&stuck, "removing");
        let (status, _) = call(&r, "DELETE", &format!("/v2-beta/hosts/{stuck}")).await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(r.host(&stuck).unwrap().state, "removing");
        assert_eq!(r.host(&fresh).unwrap().state, "active");
        assert_eq!(r.host(&fresh).unwrap().history, ["registering", "active"]);
        r.unstick(&stuck);
        assert_eq!(r.host(&stuck).unwrap().state, "removed");

        // A registering host can be deactivated.
        let other = r.add_host(host_spec("o", "registering", None));
        let (status, body) =
            call(&r, "POST", &format!("/v1/hosts/{other}?action=deactivate")).await;
        assert_eq!((status, &body["state"]), (202, &json!("deactivating")));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            r.host(&other).unwrap().history,
            ["registering", "deactivating", "inactive"]
        );
        r.set_host_state(&other, "active", Some("reconnecting"));
        let host = get(&r, &format!("/v2-beta/hosts/{other}")).await;
        assert_eq!(host["state"], "reconnecting");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn faults_latency_and_the_request_log() {
        let r = RancherServer::start(fast()).await;
        let id = r.add_host(host_spec("a", "active", None));
        let hosts = "/v2-beta/projects/1a5/hosts";
        r.fail(Match::path("/hosts").method("GET"), Fault::Status(503), 2);
        r.fail(Match::action("deactivate"), Fault::Status(409), 1);
        for _ in 0..2 {
            let (status, body) = call(&r, "GET", hosts).await;
            assert_eq!(status, 503);
            assert_eq!(
                (&body["type"], &body["code"], &body["status"]),
                (&json!("error"), &json!("ServiceUnavailable"), &json!(503))
            );
        }
        get(&r, hosts).await;
        let action = format!("{hosts}/{id}?action=deactivate");
        assert_eq!(
            call(&r, "POST", &action).await,
            (
                409,
                json!({"type":"error","status":409,"code":"Conflict","message":"busy","fieldName":null})
            )
        );
        assert_eq!(call(&r, "POST", &action).await.0, 202);
        // Injected errors come before authentication.
        r.fail(Match::path("/v1"), Fault::Status(500), 1);
        let (status, body) = call_as(&r, None, "GET", "/v1", &[]).await;
        assert_eq!((status, &body["code"]), (500, &json!("ServerError")));
        // A refused action is Cattle's 422.
        r.fail(Match::any(), Fault::ValidationError, 1);
        let (status, body) = call(&r, "POST", &action).await;
        assert_eq!((status, &body["code"]), (422, &json!("ActionNotAvailable")));

        let log = r.requests();
        let statuses: Vec<u16> = log.iter().map(|e| e.status).collect();
        assert_eq!(statuses, [503, 503, 200, 409, 202, 500, 422]);
        let injected: Vec<bool> = log.iter().map(|e| e.injected).collect();
        assert_eq!(injected, [true, true, false, true, false, true, true]);
        assert_eq!(log[3].method, "POST");
        assert_eq!(log[3].path, format!("{hosts}/{id}"));
        assert_eq!(log[3].query, "action=deactivate");
        assert_eq!(log[3].action, "deactivate");

        r.set_latency(Duration::from_millis(300));
        let started = Instant::now();
        get(&r, hosts).await;
        assert!(started.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_old_server_has_only_v1_with_every_scoping() {
        let r = RancherServer::start(RancherOptions {
            v2beta: false,
            ..fast()
        })
        .await;
        let id = r.add_host(host_spec("a", "active", None));
        assert_eq!(call(&r, "GET", "/v2-beta").await.0, 404);
        assert_eq!(call(&r, "GET", "/v2-beta/projects/1a5/hosts").await.0, 404);
        assert_eq!(get(&r, "/v1").await["id"], "v1");
        assert_eq!(get(&r, "/v1/projects/1a5").await["name"], "Default");
        assert_eq!(call(&r, "GET", "/v1/projects/1a9").await.0, 404);
        assert_eq!(ids(&get(&r, "/v1/hosts").await), vec![id.clone()]);
        assert_eq!(
            ids(&get(&r, "/v1/hosts?projectId=1a5").await),
            vec![id.clone()]
        );
        assert_eq!(call(&r, "GET", "/v1/hosts?projectId=1a9").await.0, 404);
        let secret = r.secret_key();
        let auth = Some((r.access_key(), secret.as_str()));
        let (status, body) =
            call_as(&r, auth, "GET", "/v1/hosts", &[("X-API-Project-Id", "1a5")]).await;
        assert_eq!((status, ids(&body)), (200, vec![id.clone()]));
        let scoped = get(&r, "/v1/projects/1a5/hosts").await;
        assert_eq!(
            scoped["data"][0]["links"]["self"],
            format!("{}/v1/projects/1a5/hosts/{id}", r.url())
        );
        assert_eq!(
            get(&r, &format!("/v1/projects/1a5/hosts/{id}")).await["state"],
            "active"
        );
    }

    fn bootstrap_body(url: &str, env: &[&str], binds: Vec<String>) -> ContainerCreateBody {
        ContainerCreateBody {
            image: Some(AGENT_IMAGE.to_string()),
            cmd: Some(vec![url.to_string()]),
            env: Some(env.iter().map(|e| e.to_string()).collect()),
            host_config: Some(HostConfig {
                binds: Some(binds),
                auto_remove: Some(true),
                privileged: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn run(docker: &Docker, name: &str, body: ContainerCreateBody) {
        let options = CreateContainerOptions {
            name: Some(name.to_string()),
            ..Default::default()
        };
        docker
            .create_container(Some(options), body)
            .await
            .expect("create");
        docker.start_container(name, None).await.expect("start");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_watcher_turns_a_bootstrap_into_a_host() {
        let engine = DockerEngine::launch().await.expect("engine");
        let r = RancherServer::start(fast()).await;
        r.watch(&engine);
        r.watch(&engine);
        let docker = engine.client().await.expect("client");
        let engine_name = docker.info().await.unwrap().name.unwrap();
        let token = r.add_registration_token(true);
        let url = r.registration_url(&token).unwrap();
        let binds = vec![format!(
            "{}/rancher:/var/lib/rancher",
            engine.dir().display()
        )];
        let env = [
            "CATTLE_AGENT_IP=10.0.1.23",
            "CATTLE_HOST_LABELS=aws.instance_id=i-1&role=x&role=y",
        ];
        run(&docker, "boot", bootstrap_body(&url, &env, binds.clone())).await;

        wait_until("a host", Duration::from_secs(10), || !r.hosts().is_empty()).await;
        let host = r.hosts().remove(0);
        assert_eq!(host.history[0], "registering");
        assert_eq!(host.hostname, engine_name);
        assert_eq!(host.agent_ip, "10.0.1.23");
        assert_eq!(
            host.labels,
            BTreeMap::from([
                ("aws.instance_id".to_string(), "i-1".to_string()),
                ("role".to_string(), "x".to_string()),
            ])
        );
        wait_until("active", Duration::from_secs(5), || {
            r.host(&host.id).unwrap().state == "active"
        })
        .await;
        assert_eq!(r.host(&host.id).unwrap().history, ["registering", "active"]);

        // Recorded once the agent container is started, which a loaded engine may finish
        // after the host turned active.
        wait_until("the bootstrap recorded", Duration::from_secs(30), || {
            !r.bootstraps_seen().is_empty()
        })
        .await;
        let seen = r.bootstraps_seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].image, AGENT_IMAGE);
        assert_eq!(seen[0].args, vec![url.clone()]);
        assert!(seen[0].env.contains(&env[0].to_string()));
        assert_eq!(seen[0].binds, binds);
        assert!(!seen[0].privileged);
        assert!(seen[0].auto_remove);
        assert_eq!(seen[0].host_id.as_deref(), Some(host.id.as_str()));
        let agent = engine.container("rancher-agent").await.expect("agent");
        assert!(agent.running);
        assert_eq!(agent.image, AGENT_IMAGE);
        assert_eq!(agent.args, ["run"]);
        assert_eq!(agent.restart_policy, "always");
        assert_eq!(agent.network_mode, "host");
        assert_eq!(agent.binds, binds);
        assert!(!agent.privileged);
        assert_eq!(
            agent
                .labels
                .get("io.rancher.container.system")
                .map(String::as_str),
            Some("rancher-agent")
        );

        // The agent going away disconnects the host; back, it reconnects.
        docker
            .stop_container("rancher-agent", None::<StopContainerOptions>)
            .await
            .unwrap();
        wait_until("disconnected", Duration::from_secs(5), || {
            r.host(&host.id).unwrap().agent_state.as_deref() == Some("disconnected")
        })
        .await;
        let v2 = get(&r, &format!("/v2-beta/hosts/{}", host.id)).await;
        assert_eq!(v2["state"], "disconnected");
        docker.start_container("rancher-agent", None).await.unwrap();
        wait_until("reconnected", Duration::from_secs(5), || {
            r.host(&host.id).unwrap().agent_state.is_none()
        })
        .await;

        // Running the bootstrap again gives back the same host and a new agent.
        let env2 = [
            "CATTLE_AGENT_IP=10.0.1.23",
            "CATTLE_HOST_LABELS=aws.instance_id=i-1",
        ];
        run(&docker, "boot2", bootstrap_body(&url, &env2, binds.clone())).await;
        wait_until("second bootstrap", Duration::from_secs(10), || {
            r.bootstraps_seen().len() == 2
        })
        .await;
        assert_eq!(r.hosts().len(), 1);
        assert_eq!(
            r.bootstraps_seen()[1].host_id.as_deref(),
            Some(host.id.as_str())
        );
        assert_eq!(r.host(&host.id).unwrap().labels.len(), 1);
        let agent2 = engine.container("rancher-agent").await.expect("agent");
        assert_ne!(agent2.id, agent.id);
        assert!(agent2.running);

        // A token the server does not know, and a loopback address, are refused.
        let bad = format!("{}/v1/scripts/NOPE", r.url());
        run(&docker, "boot3", bootstrap_body(&bad, &env, binds.clone())).await;
        let loopback = ["CATTLE_AGENT_IP=127.0.0.1"];
        run(
            &docker,
            "boot4",
            bootstrap_body(&url, &loopback, binds.clone()),
        )
        .await;
        wait_until("refusals", Duration::from_secs(10), || {
            r.bootstraps_seen().len() == 4
        })
        .await;
        assert!(r.bootstraps_seen()[2..]
            .iter()
            .all(|b| b.rejected.is_some() && b.host_id.is_none()));
        assert_eq!(r.hosts().len(), 1);

        // Once the host is deleted in Rancher, the next run registers a new one.
        r.set_host_state(&host.id, "removed", None);
        run(&docker, "boot5", bootstrap_body(&url, &env, binds)).await;
        wait_until("a new host", Duration::from_secs(10), || {
            r.hosts().len() == 2
        })
        .await;
        assert_ne!(r.hosts()[1].id, host.id);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_watcher_waits_for_the_engine_and_survives_restarts() {
        let mut engine = DockerEngine::reserve().expect("reserve");
        let r = RancherServer::start(fast()).await;
        r.watch_docker(engine.socket());
        tokio::time::sleep(Duration::from_millis(500)).await;
        engine.start().await.expect("start");
        engine.import_agent_image(AGENT_IMAGE).await.expect("image");
        let docker = engine.client().await.expect("client");
        let token = r.add_registration_token(true);
        let url = r.registration_url(&token).unwrap();
        let env = ["CATTLE_AGENT_IP=10.0.1.24"];
        run(&docker, "boot", bootstrap_body(&url, &env, Vec::new())).await;
        wait_until("active", Duration::from_secs(10), || {
            r.hosts().first().is_some_and(|h| h.state == "active")
        })
        .await;
        let id = r.hosts()[0].id.clone();

        // The engine going down takes the agent with it; back up, the agent restarts.
        engine.stop();
        wait_until("disconnected", Duration::from_secs(5), || {
            r.host(&id).unwrap().agent_state.as_deref() == Some("disconnected")
        })
        .await;
        engine.start().await.expect("restart");
        wait_until("reconnected", Duration::from_secs(10), || {
            r.host(&id).unwrap().agent_state.is_none()
        })
        .await;
        assert_eq!(r.hosts().len(), 1);
    }
}
